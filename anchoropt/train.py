"""Training: zero-shot, CoOp and AnchorOPT under the two schedules, one loop for all.

- ``two_stage``: Stage I (anchors, SPEC section 3) to completion, anchors frozen, then
  Stage II (soft tokens + position matrix, SPEC section 4).
- ``one_stage``: alternate ``period`` anchor steps (Stage I loss, prompt frozen) and
  ``period`` prompt steps (Stage II loss, anchors frozen) over ``epochs`` (SPEC section 6).

Optimisation follows SPEC section 5: SGD with momentum and weight decay, a constant
warm-up lr for ``warmup_epochs``, then cosine decay (as Dassl's ConstantWarmupScheduler
around CosineAnnealingLR), set once per epoch. Trainable tensors and optimiser state are
fp32; the forward pass runs under fp16 autocast on GPU.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from tqdm.auto import tqdm

from anchoropt.backbone import Backbone, create_backbone
from anchoropt.config import TrainConfig
from anchoropt.data import build_dataset
from anchoropt.data.check import check_run_images
from anchoropt.io import save_json, save_tensors
from anchoropt.metrics import harmonic_mean
from anchoropt.prompts import AnchorOPTPrompt, AnchorPrompt, CoOpPrompt, clip_logits, kd_loss, stage1_loss
from anchoropt.records import build_record
from anchoropt.task import Task, build_task, read_targets, task_descriptions
from anchoropt.text import ClassTokens, TextEncoder

EpochCallback = Callable[[int, dict], None]


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the phase, epoch and step."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (as Dassl's ``set_random_seed``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(epoch: int, base_lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Learning rate of a 0-based epoch: ``warmup_lr`` during warm-up, then
    ``base_lr * (1 + cos(pi * (epoch - warmup) / epochs)) / 2`` (Dassl's constant warm-up + cosine)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(epochs, 1)))


@dataclass
class Stepper:
    """One trainable group: its SGD optimiser and base learning rate."""

    optimizer: torch.optim.Optimizer
    base_lr: float

    @classmethod
    def sgd(cls, params, lr: float, cfg: TrainConfig) -> "Stepper":
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return cls(opt, lr)

    def set_epoch(self, epoch: int, epochs: int, cfg: TrainConfig) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(epoch, self.base_lr, epochs, cfg.warmup_epochs, cfg.warmup_lr)

    def step(self, loss: torch.Tensor, scaler: torch.amp.GradScaler) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(self.optimizer)
        scaler.update()


class Trainer:
    """Holds the frozen backbone, a :class:`Task` and the learners of one run."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone, task: Task, device: torch.device):
        self.cfg, self.backbone, self.task, self.device = cfg, backbone, task, device
        clip = backbone.model
        self.encoder = TextEncoder(clip).to(device)
        self.logit_scale = clip.logit_scale.detach()
        self.width = clip.token_embedding.weight.shape[1]
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.train_features = task.train_features.to(device)
        self.train_labels = task.train_labels.to(device)
        self._tokens: dict[tuple, ClassTokens] = {}

    # -- shared pieces -------------------------------------------------------------------------
    def tokens(self, classnames: list[str], n_block: int, rest: str) -> ClassTokens:
        """Tokenised fixed embeddings of a class set, built once per (classes, pattern)."""
        key = (tuple(classnames), n_block, rest)
        if key not in self._tokens:
            self._tokens[key] = ClassTokens.build(classnames, n_block, rest, self.backbone.tokenizer,
                                                  self.backbone.model.token_embedding, self.cfg.truncate)
        return self._tokens[key]

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    def image_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches of one random precomputed view per image: ``[B, D]``, ``[B]``."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        n, views = self.train_features.shape[:2]
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        for start in range(0, n, self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            yield self.train_features[idx, view[idx]], self.train_labels[idx]

    def class_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """Shuffled batches of training-class indices for Stage I."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_019 + epoch)
        order = torch.randperm(len(self.task.classnames), generator=gen)
        yield from order.split(self.cfg.anchor_batch_size)

    def run_loop(self, phase: str, epochs: int, batches: Callable[[int], Iterator], step: Callable,
                 steppers: list[Stepper], on_epoch: EpochCallback | None = None) -> None:
        """The one training loop: per epoch set learning rates, run ``step(batch, global_step)``
        (it returns ``(loss, stepper)``), check the loss is finite, report the mean loss."""
        global_step = 0
        for epoch in range(epochs):
            for s in steppers:
                s.set_epoch(epoch, epochs, self.cfg)
            total, count = 0.0, 0
            bar = tqdm(list(batches(epoch)), desc=f"{phase} epoch {epoch + 1}/{epochs}", leave=False,
                       disable=None)
            for i, batch in enumerate(bar):
                with self.autocast():
                    loss, stepper = step(batch, global_step)
                value = loss.item()  # the one host sync per step
                if not math.isfinite(value):
                    raise NonFiniteLoss(f"{phase}: non-finite loss ({value}) at epoch {epoch + 1}, step {i + 1}")
                stepper.step(loss, self.scaler)
                total, count, global_step = total + value, count + 1, global_step + 1
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if on_epoch is not None:
                on_epoch(epoch, {"phase": phase, "loss": total / max(count, 1)})

    # -- Stage I -------------------------------------------------------------------------------
    def description_targets(self) -> torch.Tensor:
        """L2-normalised description features ``[C, n_desc, D]`` of the training classes."""
        sentences = task_descriptions(self.cfg, self.task)
        with torch.no_grad(), self.autocast():
            flat = [s for per_class in sentences for s in per_class]
            tokens = self.backbone.tokenizer(flat).to(self.device)
            feats = torch.cat([self.backbone.model.encode_text(t) for t in tokens.split(256)]).float()
        return F.normalize(feats, dim=-1).view(len(sentences), self.cfg.n_descriptions, -1)

    def anchor_step_fn(self, anchor: AnchorPrompt, stepper: Stepper):
        targets = self.description_targets()
        tokens = self.tokens(self.task.classnames, self.cfg.n_anchors, AnchorPrompt.rest)

        def step(class_idx: torch.Tensor, _step: int):
            idx = class_idx.to(self.device)
            pred = anchor(self.encoder, tokens.select(idx))
            return stage1_loss(pred.float(), targets[idx], self.cfg.mse_weight), stepper
        return step

    def train_anchors(self, on_epoch: EpochCallback | None = None) -> AnchorPrompt:
        """Stage I to completion; reuses a cached result of the same Stage I configuration."""
        anchor = AnchorPrompt(self.cfg.n_anchors, self.width, self._eos_shift()).to(self.device)
        path = stage1_cache_path(self.cfg, self.backbone, self.task)
        with FileLock(str(path) + ".lock"):  # concurrent trials with one Stage I config compute it once
            if path.is_file():
                anchor.anchors.data.copy_(torch.load(path, weights_only=True)["anchors"])
                return anchor
            stepper = Stepper.sgd([anchor.anchors], self.cfg.anchor_lr, self.cfg)
            self.run_loop("stage1", self.cfg.anchor_epochs, self.class_batches,
                          self.anchor_step_fn(anchor, stepper), [stepper], on_epoch)
            save_tensors({"anchors": anchor.anchors.detach().cpu()}, path)
        return anchor

    # -- Stage II / CoOp -----------------------------------------------------------------------
    def prompt_features(self, learner, tokens: ClassTokens, anchor: AnchorPrompt | None) -> torch.Tensor:
        if isinstance(learner, AnchorOPTPrompt):
            return learner(self.encoder, tokens, anchor.anchors)
        return learner(self.encoder, tokens)

    def train_prompt(self, learner, anchor: AnchorPrompt | None, on_epoch: EpochCallback | None = None) -> None:
        """CoOp (CE only) or AnchorOPT Stage II (CE + KD from the anchor ensemble), either schedule."""
        cfg = self.cfg
        tokens = self.tokens(self.task.classnames, learner.n_block, learner.rest)
        prompt_stepper = Stepper.sgd([p for p in learner.parameters()], cfg.lr, cfg)
        steppers = [prompt_stepper]
        anchor_step = None
        if anchor is not None and cfg.schedule == "one_stage":
            anchor_stepper = Stepper.sgd([anchor.anchors], cfg.anchor_lr, cfg)
            anchor_step = self.anchor_step_fn(anchor, anchor_stepper)
            steppers.append(anchor_stepper)
            class_iter = _cycle(self.class_batches)
        anchor_tokens = self.tokens(self.task.classnames, cfg.n_anchors, AnchorPrompt.rest)
        cached_anchor_text: list[torch.Tensor] = []  # frozen anchors: their text features are fixed

        def anchor_text() -> torch.Tensor:
            if not cached_anchor_text:
                with torch.no_grad():
                    cached_anchor_text.append(anchor(self.encoder, anchor_tokens).float())
            return cached_anchor_text[0]

        def step(batch, global_step: int):
            if anchor_step is not None and (global_step // cfg.period) % 2 == 0:
                cached_anchor_text.clear()
                return anchor_step(next(class_iter), global_step)
            feats, labels = batch
            logits = clip_logits(feats, self.prompt_features(learner, tokens, anchor).float(), self.logit_scale)
            loss = cfg.ce_weight * F.cross_entropy(logits, labels) if anchor is not None else \
                F.cross_entropy(logits, labels)
            if anchor is not None and cfg.kd_weight > 0:
                logits_anchor = clip_logits(feats, anchor_text(), self.logit_scale)
                loss = loss + cfg.kd_weight * kd_loss(logits, logits_anchor, cfg.kd_temperature)
            return loss, prompt_stepper

        learner.train()
        self.run_loop("stage2" if anchor is not None else "coop", cfg.epochs, self.image_batches, step,
                      steppers, on_epoch)
        learner.eval()

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, learner, anchor: AnchorPrompt | None) -> dict[str, float]:
        """Accuracy (%) ``acc_<set>`` of every scored set of the task, the anchor prompt's own
        ``acc_anchor_<set>``, and ``hm`` of base and novel (base-to-novel protocol).

        Trained classes use the prompt's logits; unseen ones (novel, cross-dataset targets)
        ``(logits_prompt + logits_anchor) / 2`` when anchors exist (SPEC section 4 inference rule)."""
        if learner is not None:
            learner.eval()
        metrics = {}
        for name, ev in self.task.evals.items():
            feats, labels = ev.features.to(self.device), ev.labels.to(self.device)
            with self.autocast():
                if learner is None:
                    text = self.zeroshot_text(ev.classnames, ev.template)
                else:
                    text = self.prompt_features(learner, self.tokens(ev.classnames, learner.n_block, learner.rest),
                                                anchor)
                logits = clip_logits(feats, text.float(), self.logit_scale)
                if anchor is not None:
                    anchor_logits = clip_logits(
                        feats, anchor(self.encoder, self.tokens(ev.classnames, self.cfg.n_anchors,
                                                                AnchorPrompt.rest)).float(), self.logit_scale)
                    metrics[f"acc_anchor_{name}"] = _accuracy(anchor_logits, labels)
                    if not ev.seen:
                        logits = (logits + anchor_logits) / 2
            metrics[f"acc_{name}"] = _accuracy(logits, labels)
        if self.cfg.protocol == "base2novel":
            metrics["hm"] = harmonic_mean(metrics["acc_base"], metrics["acc_novel"])
        return metrics

    def zeroshot_text(self, classnames: list[str], template: str) -> torch.Tensor:
        tokens = self.backbone.tokenizer([template.format(c) for c in classnames]).to(self.device)
        return self.backbone.model.encode_text(tokens).float()

    def _eos_shift(self) -> int:
        return self.cfg.n_anchors if self.cfg.eos_index == "reference" else 0


def stage1_cache_path(cfg: TrainConfig, backbone: Backbone, task: Task) -> Path:
    """Cache file of a Stage I result, keyed by everything Stage I depends on (SPEC section 3)."""
    key = {k: getattr(cfg, k) for k in ("seed", "n_anchors", "anchor_lr", "anchor_epochs", "anchor_batch_size",
                                        "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "mse_weight",
                                        "n_descriptions", "eos_index", "truncate")}
    key.update(backbone=backbone.name, weights=backbone.weights_id, dataset=task.dataset,
               classes=task.classnames, descriptions=str(task.descriptions_path))
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cfg.cache_dir).expanduser() / "stage1" / f"{digest}.pt"


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()


def _cycle(make: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=2)
def cached_backbone(name: str, pretrained: str, quick_gelu: bool | None, device: str, preprocess: str = "") -> Backbone:
    """One frozen backbone per process, reused by every run in it (Ray actors run many trials)."""
    return create_backbone(name, pretrained, quick_gelu, device, preprocess)


def train(cfg: TrainConfig, out_dir: str | Path | None = None,
          report: Callable[[dict], None] | None = None) -> dict:
    """Run one (dataset, seed, config) end to end and return its result record.

    Args:
        cfg: validated configuration.
        out_dir: if given, ``record.json`` and ``prompts.pt`` (learned tensors, loadable with
            ``torch.load(weights_only=True)``) are written there atomically.
        report: called after every CoOp / Stage II epoch with ``epoch`` (1-based), ``loss`` and
            the metrics of :meth:`Trainer.evaluate` (percent); used by search for per-epoch reports.

    Returns:
        The record (:func:`anchoropt.records.build_record`, docs/INTERFACES.md): config, seed, metrics in percent (base2novel:
        ``acc_base``, ``acc_novel``, ``hm``; cross_dataset: ``acc_<dataset>`` for the source and
        each target), wall time, versions.

    Raises:
        DataError, BackboneError, NonFiniteLoss: with a one-line message naming the cause.
    """
    start = time.time()
    device = resolve_device(cfg.device)
    data = build_dataset(cfg.data_root, cfg.dataset)  # bad data fails before a large backbone loads
    targets = read_targets(cfg) if cfg.protocol == "cross_dataset" else None
    check_run_images(cfg, data, targets)  # present and decodable, before the backbone is built
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    task = build_task(cfg, backbone, device, data, targets)
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, backbone, task, device)
    learner, anchor = build_learners(cfg, trainer.width, trainer._eos_shift(), device)

    def on_epoch(epoch: int, info: dict) -> None:
        if report is not None and info["phase"] != "stage1":
            metrics = trainer.evaluate(learner, anchor)
            learner.train()
            report({"epoch": epoch + 1, "loss": info["loss"], **metrics})

    if anchor is not None and cfg.schedule == "two_stage":
        anchor = trainer.train_anchors()
    if learner is not None:
        trainer.train_prompt(learner, anchor, on_epoch)
    metrics = trainer.evaluate(learner, anchor)
    record = build_record(cfg, metrics, time.time() - start)
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_tensors(learned_tensors(learner, anchor), out_dir / "prompts.pt")
        save_json(record, out_dir / "record.json")
    return record


def build_learners(cfg: TrainConfig, width: int, eos_shift: int, device: torch.device):
    """(prompt learner or None, anchor prompt or None) for ``cfg.method``."""
    if cfg.method == "zeroshot":
        return None, None
    if cfg.method == "coop":
        return CoOpPrompt(cfg.n_ctx, width).to(device), None
    learner = AnchorOPTPrompt(cfg.n_ctx, cfg.n_anchors, width, cfg.gumbel_tau, cfg.position_eval, eos_shift)
    return learner.to(device), AnchorPrompt(cfg.n_anchors, width, eos_shift).to(device)


def learned_tensors(learner, anchor: AnchorPrompt | None) -> dict[str, torch.Tensor]:
    """Soft tokens ``ctx [M, d]``, ``position [M+N, M+N]``, ``anchors [N, d]`` (those that exist), on CPU."""
    out = {}
    if learner is not None:
        out.update({k: v.detach().cpu() for k, v in learner.state_dict().items()})
    if anchor is not None:
        out["anchors"] = anchor.anchors.detach().cpu()
    return out
