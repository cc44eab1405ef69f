"""Methods: zero-shot CLIP, CoOp and CoOp+AnchorOPT behind one interface.

A :class:`Method` is built from a :class:`~anchoropt.engine.Trainer` (the run's backbone, task
and loop), trains with :meth:`Method.fit`, scores a class set with :meth:`Method.scores` (the
method's inference rule) and hands its learned tensors to :meth:`Method.tensors`. Register a new
base (CoCoOp, MaPLe, DePT: SPEC section 6) by subclassing and adding it to :data:`METHODS`;
``TrainConfig.method`` picks one by name.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from anchoropt.config import ConfigError
from anchoropt.engine import EpochCallback, Stepper, Trainer, steps_per_epoch, stream_generator
from anchoropt.io import save_tensors
from anchoropt.prompts import (AnchorOPTPrompt, AnchorPrompt, CoOpPrompt, clip_logits, gumbel_hard, kd_loss,
                               normal_init, phrase_init, stage1_loss)
from anchoropt.task import EvalSet
from anchoropt.text import prompt_classname

REFERENCE_TEST_BATCH = 100  # images per test batch in the reference (Dassl TEST.BATCH_SIZE): one W sample each


class Method:
    """One interface for every method. Subclasses set :attr:`name` and override what they train."""

    name: ClassVar[str]

    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg = trainer, trainer.cfg

    def modules(self) -> list[nn.Module]:
        """The learners (``nn.Module``) whose tensors the method trains."""
        return []

    def train(self) -> None:
        for m in self.modules():
            m.train()

    def eval(self) -> None:
        for m in self.modules():
            m.eval()

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        """Train; ``on_epoch(epoch, {"phase", "loss"})`` after each epoch of each phase."""

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        """Logits ``[N, C]`` of the images of ``ev`` over its classes, by score name: ``acc`` is
        the method's prediction; others (``acc_anchor``) are extra diagnostics."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors by name, on CPU (``prompts.pt``)."""
        return {}

    def updates(self) -> dict[str, int]:
        """Optimiser updates per trainable group (recorded, so schedules compare by step count)."""
        return {}


class ZeroShot(Method):
    """Zero-shot CLIP: the dataset's hand-written template, nothing trained (SPEC section 2)."""

    name = "zeroshot"

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        backbone = self.trainer.backbone
        tokens = backbone.tokenizer([ev.template.format(prompt_classname(c)) for c in ev.classnames])
        text = backbone.model.encode_text(tokens.to(self.trainer.device)).float()
        return {"acc": clip_logits(ev.features.to(self.trainer.device), text, self.trainer.logit_scale)}


def soft_token_init(trainer: Trainer) -> torch.Tensor:
    """Initial soft tokens ``[M, d]``: the embeddings of ``ctx_init``'s tokens when given (CoOp),
    else N(0, 0.02) from the run's ``soft_tokens`` stream with M = ``n_ctx``."""
    cfg = trainer.cfg
    if cfg.ctx_init:
        return phrase_init(cfg.ctx_init, trainer.backbone.tokenizer, trainer.backbone.model.token_embedding)
    return normal_init(cfg.n_ctx, trainer.width, stream_generator(cfg.seed, "soft_tokens"))


class CoOp(Method):
    """CoOp: shared soft tokens trained with cross-entropy on the few-shot images."""

    name = "coop"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.prompt = CoOpPrompt(soft_token_init(trainer)).to(trainer.device)
        self.stepper = Stepper.sgd(list(self.prompt.parameters()), self.cfg.lr, self.cfg)

    def modules(self) -> list[nn.Module]:
        return [self.prompt]

    def text(self, classnames: list[str]) -> torch.Tensor:
        return self.prompt(self.trainer.encoder, self.trainer.tokens(classnames, self.prompt.n_block,
                                                                      self.prompt.rest)).float()

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        feats, labels = batch
        logits = clip_logits(feats, self.text(self.trainer.task.classnames), self.trainer.logit_scale)
        return F.cross_entropy(logits, labels), self.stepper

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        self.train()
        t = self.trainer
        t.run_loop("coop", self.cfg.epochs,
                   lambda epoch: [lambda b=b: self.prompt_step(b) for b in t.image_batches(epoch)],
                   [self.stepper], on_epoch)
        self.eval()

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        return {"acc": clip_logits(ev.features.to(self.trainer.device), self.text(ev.classnames),
                                   self.trainer.logit_scale)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()}

    def updates(self) -> dict[str, int]:
        return {"prompt": self.stepper.updates}


class AnchorOPT(Method):
    """CoOp+AnchorOPT (SPEC sections 3 and 4): anchors fitted to LLM descriptions (Stage I),
    soft tokens and the position matrix trained with CE + KD from the anchor prompt (Stage II),
    in the order of the named schedule ``cfg.schedule`` (:mod:`anchoropt.schedules`)."""

    name = "anchoropt"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        cfg = self.cfg
        eos_shift = cfg.n_anchors if cfg.eos_index == "reference" else 0  # Stage II prompt only (reference)
        ctx = soft_token_init(trainer)
        n_block = ctx.shape[0] + cfg.n_anchors
        position = torch.randn(n_block, n_block, generator=stream_generator(cfg.seed, "positions"))
        self.prompt = AnchorOPTPrompt(ctx, position, stream_generator(cfg.seed, "gumbel"), cfg.gumbel_tau,
                                      cfg.position_eval, eos_shift).to(trainer.device)
        self.anchor = AnchorPrompt(anchor_init(trainer)).to(trainer.device)
        self.fixed_position = fixed_position_matrix(cfg, n_block)  # None: W learned
        if self.fixed_position is not None:
            self.fixed_position = self.fixed_position.to(trainer.device)
        trainable = [self.prompt.ctx] + ([self.prompt.position] if self.fixed_position is None else [])
        self.prompt_stepper = Stepper.sgd(trainable, cfg.lr, cfg)
        self.anchor_stepper = Stepper.sgd([self.anchor.anchors], cfg.anchor_lr, cfg)
        self.stage1_updates = 0  # Stage I updates, also when the result came from the cache
        self._targets: torch.Tensor | None = None
        self._teacher: torch.Tensor | None = None  # anchor text of the training classes while anchors are frozen

    def modules(self) -> list[nn.Module]:
        return [self.prompt, self.anchor]

    # -- Stage I -------------------------------------------------------------------------------
    def anchor_step(self) -> tuple[torch.Tensor, Stepper]:
        """One Stage I step: the MSE over *all* training classes (the reference's step per image
        batch computes every class's anchor prompt)."""
        t = self.trainer
        if self._targets is None:
            self._targets = t.description_targets()
        self._teacher = None  # the anchors are about to change
        tokens = t.tokens(t.task.classnames, self.cfg.n_anchors, AnchorPrompt.rest)
        pred = self.anchor(t.encoder, tokens)
        return stage1_loss(pred.float(), self._targets, self.cfg.mse_weight), self.anchor_stepper

    def stage1_steps_per_epoch(self) -> int:
        """Stage I steps per epoch: ``floor(training images / anchor_batch_size)``, one per image
        batch of the reference's loader (drop_last), each over every class."""
        return steps_per_epoch(len(self.trainer.train_labels), self.cfg.anchor_batch_size)

    def fit_anchors(self) -> None:
        """Stage I to completion: ``anchor_epochs`` x ``steps_per_epoch`` steps; reuses a cached
        result of the same Stage I configuration (concurrent trials compute it once)."""
        t, cfg = self.trainer, self.cfg
        if cfg.anchor_source != "stage1":  # ablation: the anchors stay as anchor_init made them
            return
        steps = self.stage1_steps_per_epoch()
        self.stage1_updates = cfg.anchor_epochs * steps
        path = stage1_cache_path(t, steps)
        with FileLock(str(path) + ".lock"):
            if path.is_file():
                self.anchor.anchors.data.copy_(torch.load(path, weights_only=True)["anchors"])
                t.stage1_descriptions()  # the record counts cut descriptions as if Stage I ran
                return
            t.run_loop("stage1", cfg.anchor_epochs, lambda epoch: [self.anchor_step] * steps,
                       [self.anchor_stepper])
            save_tensors({"anchors": self.anchor.anchors.detach().cpu()}, path)

    # -- Stage II ------------------------------------------------------------------------------
    def teacher(self) -> torch.Tensor:
        """Anchor-prompt text features ``[C, D]`` of the training classes (no gradient)."""
        if self._teacher is None:
            t = self.trainer
            with torch.no_grad():
                self._teacher = self.anchor(t.encoder, t.tokens(t.task.classnames, self.cfg.n_anchors,
                                                                AnchorPrompt.rest)).float()
        return self._teacher

    def text(self, classnames: list[str], position: torch.Tensor | None = None) -> torch.Tensor:
        t = self.trainer
        tokens = t.tokens(classnames, self.prompt.n_block, self.prompt.rest)
        position = self.fixed_position if position is None else position
        return self.prompt(t.encoder, tokens, self.anchor.anchors, position).float()

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        """One Stage II step: ``ce_weight * CE + kd_weight * KD`` (SPEC section 4)."""
        feats, labels = batch
        t, cfg = self.trainer, self.cfg
        logits = clip_logits(feats, self.text(t.task.classnames), t.logit_scale)
        loss = cfg.ce_weight * F.cross_entropy(logits, labels)
        if cfg.kd_weight > 0:
            loss = loss + cfg.kd_weight * kd_loss(logits, clip_logits(feats, self.teacher(), t.logit_scale),
                                                  cfg.kd_temperature)
        return loss, self.prompt_stepper

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        from anchoropt.schedules import SCHEDULES

        self.train()
        SCHEDULES[self.cfg.schedule](self, on_epoch)
        self.eval()

    # -- inference -----------------------------------------------------------------------------
    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        """Trained classes use the prompt's logits; unseen ones (novel, cross-dataset targets)
        ``(logits_prompt + logits_anchor) / 2`` (SPEC section 4). Under ``position_eval: sample``
        each block of 100 images gets its own W sample, from a stream seeded per evaluation (the
        reference samples per test batch; training's noise is left untouched)."""
        t = self.trainer
        feats = ev.features.to(t.device)
        anchor_text = self.anchor(t.encoder, t.tokens(ev.classnames, self.cfg.n_anchors, AnchorPrompt.rest)).float()
        anchor_logits = clip_logits(feats, anchor_text, t.logit_scale)
        if self.prompt.position_eval == "sample" and self.fixed_position is None:
            gen = stream_generator(self.cfg.seed, "eval_positions")
            logits = torch.cat([clip_logits(chunk, self.text(ev.classnames, gumbel_hard(
                self.prompt.position, self.prompt.gumbel_tau, gen)), t.logit_scale)
                for chunk in feats.split(REFERENCE_TEST_BATCH)])
        else:
            logits = clip_logits(feats, self.text(ev.classnames), t.logit_scale)
        if not ev.seen and self.cfg.novel_rule == "ensemble":
            logits = (logits + anchor_logits) / 2
        return {"acc": logits, "acc_anchor": anchor_logits}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()}
        if self.fixed_position is not None:  # the W that ran (its argmax is itself)
            out["position"] = self.fixed_position.cpu()
        out["anchors"] = self.anchor.anchors.detach().cpu()
        return out

    def updates(self) -> dict[str, int]:
        anchors = self.anchor_stepper.updates if self.cfg.schedule == "one_stage" else self.stage1_updates
        return {"anchors": anchors, "prompt": self.prompt_stepper.updates}


def anchor_init(trainer: Trainer) -> torch.Tensor:
    """Anchors ``[N, d]`` before Stage I: N(0, 0.02) from the run's ``anchors`` stream (Stage I starts
    there; ``anchor_source=random`` keeps them), or with ``anchor_source=word`` the token embeddings
    of ``anchor_word`` (ATPrompt's fixed attribute word, Li et al. 2025).

    Raises:
        ConfigError: ``anchor_word`` has a number of BPE tokens other than ``n_anchors``.
    """
    cfg = trainer.cfg
    if cfg.anchor_source != "word":
        return normal_init(cfg.n_anchors, trainer.width, stream_generator(cfg.seed, "anchors"))
    backbone = trainer.backbone
    n = len(backbone.tokenizer.encode(cfg.anchor_word))
    if n != cfg.n_anchors:
        raise ConfigError(f"anchor_word={cfg.anchor_word!r} has {n} BPE tokens but n_anchors={cfg.n_anchors}: "
                          "give one token per anchor")
    return phrase_init(cfg.anchor_word, backbone.tokenizer, backbone.model.token_embedding)


def fixed_position_matrix(cfg, n_block: int) -> torch.Tensor | None:
    """The fixed ``W [M+N, M+N]`` of a ``position_matrix`` ablation: ``identity`` (soft tokens, then
    anchors) or ``permutation`` (rows of the identity in a random order drawn from the run's
    ``fixed_positions`` stream); None when W is learned."""
    if cfg.position_matrix == "identity":
        return torch.eye(n_block)
    if cfg.position_matrix == "permutation":
        return torch.eye(n_block)[torch.randperm(n_block, generator=stream_generator(cfg.seed, "fixed_positions"))]
    return None


METHODS: dict[str, type[Method]] = {m.name: m for m in (ZeroShot, CoOp, AnchorOPT)}


def build_method(trainer: Trainer) -> Method:
    """The method ``trainer.cfg.method`` names, built on ``trainer``."""
    return METHODS[trainer.cfg.method](trainer)


def stage1_cache_path(trainer: Trainer, steps: int) -> Path:
    """Cache file of a Stage I result, keyed by everything Stage I depends on (SPEC section 3):
    its settings, its ``steps`` per epoch (they follow the training images), the backbone and its
    precision, the classes and descriptions, and the seed (the ``anchors`` init stream)."""
    cfg, task = trainer.cfg, trainer.task
    key = {k: getattr(cfg, k) for k in ("seed", "n_anchors", "anchor_lr", "anchor_epochs", "momentum", "weight_decay",
                                        "warmup_epochs", "warmup_lr", "mse_weight", "n_descriptions", "truncate")}
    key.update(backbone=trainer.backbone.name, weights=trainer.backbone.weights_id, precision=trainer.precision,
               dataset=task.dataset, classes=task.classnames, descriptions=str(task.descriptions_path),
               steps_per_epoch=steps)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cfg.cache_dir).expanduser() / "stage1" / f"{digest}.pt"
