"""What every method trains with: the frozen backbone and task of one run, the optimiser
steppers, the one training loop, seeded random streams and evaluation.

Optimisation follows SPEC section 5: SGD with momentum and weight decay, a constant warm-up
lr for ``warmup_epochs``, then cosine decay (Dassl's ConstantWarmupScheduler around
CosineAnnealingLR), set once per epoch. An epoch is ``floor(images / batch_size)`` steps, the
last partial batch dropped, as Dassl's training loader (``drop_last`` when the set holds at
least one batch). Trainable tensors and optimiser state are fp32; the forward pass runs under
fp16 autocast on GPU.
"""
from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anchoropt.backbone import Backbone
from anchoropt.cache import cached, key_digest
from anchoropt.config import TrainConfig
from anchoropt.features import image_tensors, normalize_images
from anchoropt.metrics import harmonic_mean
from anchoropt.task import EvalSet, Task, task_descriptions
from anchoropt.text import ClassTokens, TextEncoder, encode_token_ids, token_count

#: more descriptions than this (all classes together) take long enough to encode to announce, with a bar
MANY_DESCRIPTIONS = 2000

if TYPE_CHECKING:
    from anchoropt.methods import Method

EpochCallback = Callable[[int, dict], None]
Step = Callable[[], "tuple[torch.Tensor, Stepper]"]


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the phase, epoch and step."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch (as Dassl's ``set_random_seed``), for library
    code that draws from them; this project's own draws use :func:`stream_generator`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named random stream of a run (``anchors``, ``soft_tokens``,
    ``positions``, ``gumbel``, ``batches``...), seeded from ``(seed, stream)`` only: a draw
    depends on the run seed and on nothing drawn before it (other streams, other runs in the
    process, a cache hit or miss)."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches of one epoch over ``n_images`` (Dassl's loader: ``drop_last`` when at least one full
    batch exists, else one partial batch). Also Stage I's steps per epoch (SPEC section 3)."""
    return n_images // batch_size if n_images >= batch_size else int(n_images > 0)


def lr_at(epoch: int, base_lr: float, epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """Learning rate of a 0-based epoch: ``warmup_lr`` during warm-up, then
    ``base_lr * (1 + cos(pi * (epoch - warmup) / epochs)) / 2`` (Dassl's constant warm-up + cosine)."""
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(epochs, 1)))


@dataclass
class Stepper:
    """One trainable group: its SGD optimiser, base learning rate and the updates it made."""

    optimizer: torch.optim.Optimizer
    base_lr: float
    updates: int = field(default=0)

    @classmethod
    def sgd(cls, params, lr: float, cfg: TrainConfig) -> "Stepper":
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return cls(opt, lr)

    def set_epoch(self, epoch: int, epochs: int, cfg: TrainConfig) -> None:
        """Every group's lr for ``epoch``: :func:`lr_at`, times the group's ``lr_mult`` (default 1;
        DePT's head)."""
        lr = lr_at(epoch, self.base_lr, epochs, cfg.warmup_epochs, cfg.warmup_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("lr_mult", 1.0) * lr

    def step(self, loss: torch.Tensor, scaler: torch.amp.GradScaler) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(self.optimizer)
        scaler.update()
        self.updates += 1


class Trainer:
    """The frozen backbone, the :class:`Task` and the shared machinery of one run."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone, task: Task, device: torch.device):
        self.cfg, self.backbone, self.task, self.device = cfg, backbone, task, device
        clip = backbone.model
        self.encoder = TextEncoder(clip, cfg.share_prefix).to(device)
        self.logit_scale = clip.logit_scale.detach()
        self.width = clip.token_embedding.weight.shape[1]
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.precision = "fp16" if device.type == "cuda" else "fp32"
        self.train_features = task.train_features.to(device)
        self.train_labels = task.train_labels.to(device)
        self.steps_per_epoch = steps_per_epoch(len(self.train_labels), cfg.batch_size)
        self.descriptions_cut = 0
        self._tokens: dict[tuple, ClassTokens] = {}
        self._train_pixels: torch.Tensor | None = None  # [N, V, 3, H, W] uint8, loaded by pixel_batches
        self._eval_pixels: dict[int, torch.Tensor] = {}

    def tokens(self, classnames: list[str], n_block: int, rest: str) -> ClassTokens:
        """Tokenised fixed embeddings of a class set, built once per (classes, pattern)."""
        key = (tuple(classnames), n_block, rest)
        if key not in self._tokens:
            self._tokens[key] = ClassTokens.build(classnames, n_block, rest, self.backbone.tokenizer,
                                                  self.backbone.model.token_embedding, self.cfg.truncate)
        return self._tokens[key]

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda")

    def image_batches(self, epoch: int, batch_size: int | None = None,
                      stream: str = "batches") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches of one random precomputed view per image, ``[B, D]``, ``[B]``, drawn from
        the ``stream`` stream of epoch ``epoch``: :attr:`steps_per_epoch` of ``batch_size`` (Stage II)
        by default; Stage I passes ``anchor_batch_size`` and its own stream."""
        for idx, view in self._batch_indices(epoch, batch_size or self.cfg.batch_size, stream):
            yield self.train_features[idx, view], self.train_labels[idx]

    def pixel_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The batches of :meth:`image_batches` (same images, same views) as pixels, for methods
        that prompt the image tower: uint8 ``[B, 3, H, W]`` on CPU (:meth:`model_input` makes them
        model input), the frozen tower's features of those views ``[B, D]`` and labels ``[B]``. The
        pixels are loaded on first use (:func:`anchoropt.features.image_tensors`)."""
        if self._train_pixels is None:
            cfg = self.cfg
            self._train_pixels = image_tensors(self.backbone, self.task.train_items, cfg.train_views, cfg.seed,
                                               cfg.crop_scale, cfg.flip)
        for idx, view in self._batch_indices(epoch, self.cfg.batch_size):
            yield self._train_pixels[idx.cpu(), view.cpu()], self.train_features[idx, view], self.train_labels[idx]

    def eval_images(self, ev: EvalSet, batch_size: int) -> Iterator[torch.Tensor]:
        """Model input ``[b, 3, H, W]`` on the device of ``ev``'s images in order, ``batch_size`` at a
        time (test transform; the pixels are kept in memory after the first call)."""
        key = id(ev)
        if key not in self._eval_pixels:
            self._eval_pixels[key] = image_tensors(self.backbone, ev.items)
        for chunk in self._eval_pixels[key].split(batch_size):
            yield self.model_input(chunk)

    def model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``[B, 3, H, W]`` -> normalised float ``[B, 3, H, W]`` on :attr:`device`."""
        return normalize_images(self.backbone, pixels.to(self.device, non_blocking=True))

    def _batch_indices(self, epoch: int, batch_size: int,
                       stream: str = "batches") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch the images' indices and their view, from the ``stream`` stream of ``epoch``."""
        gen = stream_generator(self.cfg.seed, f"{stream}:{epoch}")
        n, views = self.train_features.shape[:2]
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        size = min(batch_size, n)
        for start in range(0, steps_per_epoch(n, batch_size) * size, size):
            idx = order[start:start + size]
            yield idx, view[idx]

    def run_loop(self, phase: str, epochs: int, plan: Callable[[int], Iterable[Step]], steppers: list[Stepper],
                 on_epoch: EpochCallback | None = None) -> None:
        """The one training loop: per epoch set learning rates, run the steps ``plan(epoch)`` yields
        (each returns ``(loss, stepper)``), check every loss is finite, report the mean loss."""
        for epoch in range(epochs):
            for s in steppers:
                s.set_epoch(epoch, epochs, self.cfg)
            total, count = 0.0, 0
            bar = tqdm(list(plan(epoch)), desc=f"{phase} epoch {epoch + 1}/{epochs}", leave=False, disable=None)
            for i, step in enumerate(bar):
                with self.autocast():
                    loss, stepper = step()
                value = loss.item()  # the one host sync per step
                if not math.isfinite(value):
                    raise NonFiniteLoss(f"{phase}: non-finite loss ({value}) at epoch {epoch + 1}, step {i + 1}")
                stepper.step(loss, self.scaler)
                total, count = total + value, count + 1
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if on_epoch is not None:
                on_epoch(epoch, {"phase": phase, "loss": total / max(count, 1)})

    def stage1_descriptions(self) -> list[list[str]]:
        """``n_descriptions`` sentences per training class (Stage I targets). Those longer than the
        context are cut to it when encoded (EOS kept); how many is printed and kept in
        :attr:`descriptions_cut` (the record's ``training`` entry), also when Stage I is cached."""
        sentences = task_descriptions(self.cfg, self.task)
        tokenizer = self.backbone.tokenizer
        total = sum(len(per_class) for per_class in sentences)
        if total > MANY_DESCRIPTIONS:  # minutes of tokenising and encoding: say so before they start
            print(f"{self.task.dataset}: {total} descriptions ({len(sentences)} classes x n_descriptions="
                  f"{self.cfg.n_descriptions}) to encode for the Stage I targets (cached after the first time)")
        self.descriptions_cut = sum(token_count(tokenizer, s) > tokenizer.context_length
                                    for per_class in sentences for s in per_class)
        if self.descriptions_cut:
            print(f"{self.task.dataset}: {self.descriptions_cut} of {total} descriptions are longer than "
                  f"{tokenizer.context_length} tokens and were cut")
        return sentences

    def description_targets(self) -> torch.Tensor:
        """L2-normalised description features ``[C, n_desc, D]`` of the training classes (Stage I
        targets), encoded cut at each sentence's EOS (exact, :func:`encode_token_ids`) and cached in
        ``cache_dir/description_targets`` under a key of the weights, their activation and precision
        and the sentences only: every trial, seed and Stage I variant on them shares one encoding."""
        sentences = self.stage1_descriptions()
        flat = [s for per_class in sentences for s in per_class]
        backbone, n = self.backbone, self.cfg.n_descriptions
        key = key_digest({"backbone": backbone.name, "weights": backbone.weights_id,
                          "activation": backbone.activation, "precision": self.precision,
                          "n_descriptions": n, "sentences": flat})

        def encode() -> torch.Tensor:
            with self.autocast():
                feats = encode_token_ids(self.encoder, backbone.tokenizer(flat).to(self.device), self.cfg.truncate,
                                         progress="encoding descriptions" if len(flat) > MANY_DESCRIPTIONS else None)
            return F.normalize(feats.float(), dim=-1).view(len(sentences), n, -1).cpu()

        provenance = {"backbone": backbone.name, "weights": backbone.weights_id, "dataset": self.task.dataset,
                      "descriptions": str(self.task.descriptions_path), "n_descriptions": n}
        path = Path(self.cfg.cache_dir).expanduser() / "description_targets" / f"{key}.pt"
        return cached(path, "description_targets", key, provenance, encode).to(self.device)

    @torch.no_grad()
    def evaluate(self, method: "Method") -> dict[str, float]:
        """Accuracy (%) ``acc_<set>`` of every scored set of the task, the method's other scores
        (AnchorOPT: ``acc_anchor_<set>``, the anchor prompt alone) and ``hm`` of base and novel
        (base-to-novel protocol). Which logits score a set is the method's rule
        (:meth:`anchoropt.methods.Method.scores`)."""
        method.eval()
        metrics = {}
        for name, ev in self.task.evals.items():
            with self.autocast():
                scores = method.scores(ev)
            labels = ev.labels.to(self.device)
            for key, logits in scores.items():
                metrics[f"{key}_{name}"] = 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()
        if self.cfg.protocol == "base2novel":
            metrics["hm"] = harmonic_mean(metrics["acc_base"], metrics["acc_novel"])
        return metrics
