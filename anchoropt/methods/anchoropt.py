"""AnchorOPT (arXiv 2511.21188) as a module added to a base method, and CoOp+AnchorOPT.

:class:`AnchorOPTMethod` owns what every base+AnchorOPT shares (SPEC sections 3, 4 and 6): the
anchor prompt and Stage I (cached, the same anchors for every base, as the reference's
``coop_pretrain_anchor`` weights are), the anchor teacher, the KD term, the novel-class ensemble
and the schedules. A base adds its prompt: it sets :attr:`prompt_stepper` and implements
:meth:`~AnchorOPTMethod.prompt_step` and :meth:`~AnchorOPTMethod.prompt_scores`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.anchor_file import read_anchor_file
from anchoropt.config import ConfigError
from anchoropt.engine import EpochCallback, Stepper, Trainer, steps_per_epoch, stream_generator
from anchoropt.cache import cached, key_digest
from anchoropt.errors import brief
from anchoropt.methods.base import Method, soft_token_init
from anchoropt.methods.stage1 import Stage1
from anchoropt.prompts import (AnchorOPTPrompt, AnchorPrompt, clip_logits, gumbel_hard, kd_loss, normal_init,
                               phrase_init, stage1_loss)
from anchoropt.task import EvalSet

REFERENCE_TEST_BATCH = 100  # images per test batch in the reference (Dassl TEST.BATCH_SIZE): one W sample each


class AnchorOPTMethod(Method):
    """A base method plus AnchorOPT's anchors: Stage I, teacher, KD and the novel ensemble.

    Subclasses build their prompt, set :attr:`prompt_stepper` (the Stage II group) and implement
    :meth:`prompt_step` (one Stage II step; use :meth:`stage2_loss`) and :meth:`prompt_scores`.
    ``cfg.schedule`` runs them (:mod:`anchoropt.schedules`).
    """

    prompt_stepper: Stepper

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.anchor_file = read_anchor_file(self.cfg.anchors) if self.cfg.anchors else None
        init = self.anchor_file.check(self.cfg.n_anchors, trainer.width) if self.anchor_file else anchor_init(trainer)
        self.anchor = AnchorPrompt(init).to(trainer.device)
        self.anchor_stepper = Stepper.sgd([self.anchor.anchors], self.cfg.anchor_lr, self.cfg)
        self.stage1_updates = 0  # Stage I updates, also when the result came from the cache
        self.stage1: dict = {}  # the record's training.stage1: the epoch kept, or the anchor file
        self._targets: torch.Tensor | None = None
        self._teacher: torch.Tensor | None = None  # anchor text of the training classes while anchors are frozen

    # -- Stage I -------------------------------------------------------------------------------
    def anchor_text(self, classnames: list[str]) -> torch.Tensor:
        """Anchor-prompt text features ``[C, D]`` of ``classnames`` (``SOS A of CLS . EOS``)."""
        t = self.trainer
        return self.anchor(t.encoder, t.tokens(classnames, self.cfg.n_anchors, AnchorPrompt.rest)).float()

    def description_targets(self) -> torch.Tensor:
        """Stage I targets ``[C, n_desc, D]`` (:meth:`Trainer.description_targets`), encoded once."""
        if self._targets is None:
            self._targets = self.trainer.description_targets()
        return self._targets

    def forget_teacher(self) -> None:
        """The anchors are about to change (or changed): the teacher's text is stale."""
        self._teacher = None

    def anchor_step(self) -> tuple[torch.Tensor, Stepper]:
        """One one-stage anchor step: the MSE over *all* training classes (the reference's step per
        image batch computes every class's anchor prompt); two-stage's Stage I is :class:`Stage1`."""
        self.forget_teacher()
        return stage1_loss(self.anchor_text(self.trainer.task.classnames), self.description_targets(),
                           self.cfg.mse_weight), self.anchor_stepper

    def stage1_steps_per_epoch(self) -> int:
        """Stage I steps per epoch: ``floor(training images / anchor_batch_size)``, one per image
        batch of the reference's loader (drop_last), each over every class."""
        return steps_per_epoch(len(self.trainer.train_labels), self.cfg.anchor_batch_size)

    def fit_anchors(self, on_epoch: EpochCallback | None = None) -> None:
        """Stage I to completion (:class:`~anchoropt.methods.stage1.Stage1`): ``anchor_epochs`` x
        ``steps_per_epoch`` steps, then the kept epoch's anchors; reuses a cached result of the same
        Stage I configuration (concurrent trials compute it once). With ``anchors=<file>`` the
        file's anchors (set at construction) are the Stage I result. ``on_epoch`` gets each Stage I
        epoch that runs (phase ``stage1``; none when the result came from the cache or a file)."""
        t, cfg = self.trainer, self.cfg
        if self.anchor_file is not None:
            self.stage1 = self.anchor_file.summary()
            return
        if cfg.anchor_source != "stage1":  # ablation: the anchors stay as anchor_init made them
            return
        steps = self.stage1_steps_per_epoch()
        self.stage1_updates = cfg.anchor_epochs * steps
        path = stage1_cache_path(t, steps)
        ran = []

        def stage1() -> dict[str, torch.Tensor]:
            ran.append(True)
            epoch = Stage1(self).run(steps, on_epoch)
            return {"anchors": self.anchor.anchors.detach().cpu(), "epoch": torch.tensor(epoch)}

        saved = cached(path, "stage1", path.stem, stage1_provenance(t), stage1)
        self.anchor.anchors.data.copy_(saved["anchors"])
        if not ran:  # the record counts cut descriptions also when Stage I came from the cache
            t.stage1_descriptions()
        self.forget_teacher()
        self.stage1 = {"mode": cfg.stage1_mode, "select": cfg.stage1_select, "epoch": int(saved["epoch"])}

    def training_info(self) -> dict:
        return {"stage1": self.stage1} if self.stage1 else {}

    # -- Stage II ------------------------------------------------------------------------------
    def teacher(self) -> torch.Tensor:
        """Anchor-prompt text features ``[C, D]`` of the training classes (no gradient)."""
        if self._teacher is None:
            with torch.no_grad():
                self._teacher = self.anchor_text(self.trainer.task.classnames)
        return self._teacher

    def stage2_loss(self, logits: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``ce_weight * CE(logits) + kd_weight * KD(logits, anchor logits)`` (SPEC section 4).

        Args:
            logits: ``[B, C]`` the prompt's logits over the training classes.
            image_features: ``[B, D]`` the features the anchor teacher scores (the frozen image
                tower's, or the base's own where it prompts the image tower).
            labels: ``[B]``.
        """
        return self.cfg.ce_weight * F.cross_entropy(logits, labels) + self.kd_term(logits, image_features)

    def kd_term(self, logits: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor | float:
        """``kd_weight * KD(logits [B, C], anchor logits of image_features [B, D])`` (SPEC section 4);
        0 when ``kd_weight`` is 0 (the teacher is then never computed)."""
        cfg = self.cfg
        if cfg.kd_weight == 0:
            return 0.0
        teacher = clip_logits(image_features, self.teacher(), self.trainer.logit_scale)
        return cfg.kd_weight * kd_loss(logits, teacher, cfg.kd_temperature)

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        """One Stage II step on an image batch of :meth:`Trainer.image_batches`."""
        raise NotImplementedError

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        from anchoropt.schedules import SCHEDULES

        self.train()
        SCHEDULES[self.cfg.schedule](self, on_epoch)
        self.eval()

    # -- inference -----------------------------------------------------------------------------
    def prompt_scores(self, ev: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt logits [N, C], image features [N, D] the anchor prompt scores)`` of ``ev``."""
        raise NotImplementedError

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        """Trained classes use the prompt's logits; unseen ones (novel, cross-dataset targets)
        ``(logits_prompt + logits_anchor) / 2`` (SPEC section 4); ``acc_anchor`` is the anchor
        prompt alone."""
        logits, feats = self.prompt_scores(ev)
        anchor_logits = clip_logits(feats, self.anchor_text(ev.classnames), self.trainer.logit_scale)
        if not ev.seen and self.cfg.novel_rule == "ensemble":
            logits = (logits + anchor_logits) / 2
        return {"acc": logits, "acc_anchor": anchor_logits}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu() for m in self.modules() if m is not self.anchor for k, v in m.state_dict().items()}
        out["anchors"] = self.anchor.anchors.detach().cpu()
        return out

    def updates(self) -> dict[str, int]:
        anchors = self.anchor_stepper.updates if self.cfg.schedule == "one_stage" else self.stage1_updates
        return {"anchors": anchors, "prompt": self.prompt_stepper.updates}


class AnchorOPT(AnchorOPTMethod):
    """CoOp+AnchorOPT (SPEC sections 3 and 4): soft tokens and the position matrix W over
    ``[soft tokens; anchors]`` trained with CE + KD from the anchor prompt (Stage II)."""

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
        self.fixed_position = fixed_position_matrix(cfg, n_block)  # None: W learned
        if self.fixed_position is not None:
            self.fixed_position = self.fixed_position.to(trainer.device)
        trainable = [self.prompt.ctx] + ([self.prompt.position] if self.fixed_position is None else [])
        self.prompt_stepper = Stepper.sgd(trainable, cfg.lr, cfg)

    def modules(self) -> list[nn.Module]:
        return [self.prompt, self.anchor]

    def text(self, classnames: list[str], position: torch.Tensor | None = None) -> torch.Tensor:
        t = self.trainer
        tokens = t.tokens(classnames, self.prompt.n_block, self.prompt.rest)
        position = self.fixed_position if position is None else position
        return self.prompt(t.encoder, tokens, self.anchor.anchors, position).float()

    def prompt_logits(self, feats: torch.Tensor, classnames: list[str],
                      position: torch.Tensor | None = None) -> torch.Tensor:
        """Stage II prompt logits ``[B, C]`` of image features ``[B, D]`` (``position``: a given W)."""
        return clip_logits(feats, self.text(classnames, position), self.trainer.logit_scale)

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        """One Stage II step: ``ce_weight * CE + kd_weight * KD`` (SPEC section 4)."""
        feats, labels = batch
        return self.stage2_loss(self.prompt_logits(feats, self.trainer.task.classnames), feats, labels), \
            self.prompt_stepper

    def prompt_scores(self, ev: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Under ``position_eval: sample`` each block of 100 images gets its own W sample, from a
        stream seeded per evaluation (the reference samples per test batch; training's noise is
        left untouched)."""
        t = self.trainer
        feats = ev.features.to(t.device)
        if self.prompt.position_eval == "sample" and self.fixed_position is None:
            gen = stream_generator(self.cfg.seed, "eval_positions")
            logits = torch.cat([self.prompt_logits(chunk, ev.classnames, gumbel_hard(
                self.prompt.position, self.prompt.gumbel_tau, gen)) for chunk in feats.split(REFERENCE_TEST_BATCH)])
        else:
            logits = self.prompt_logits(feats, ev.classnames)
        return logits, feats

    def position_trained(self) -> bool:
        """Whether the optimiser holds the position logits (not under a fixed-W ablation, nor in
        CoCoOp+AnchorOPT's reference ``cocoop_anchoropt_trains: ctx``)."""
        return any(p is self.prompt.position for g in self.prompt_stepper.optimizer.param_groups
                   for p in g["params"])

    def tensors(self) -> dict[str, torch.Tensor]:
        """``position`` holds learned position logits only; a W that never trained (an ablation's
        fixed W, whose argmax is itself, or logits left at their init) is ``position_untrained``,
        so no report shows it as learned (:mod:`anchoropt.report.positions`)."""
        out = super().tensors()
        if self.fixed_position is not None:  # the W that ran
            out["position"] = self.fixed_position.cpu()
        if not self.position_trained():
            out["position_untrained"] = out.pop("position")
        return out


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
        raise ConfigError(f"anchor_word={brief(cfg.anchor_word)} has {n} BPE tokens but n_anchors={cfg.n_anchors}: "
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


def stage1_cache_path(trainer: Trainer, steps: int) -> Path:
    """Cache file of a Stage I result, keyed by everything Stage I depends on (SPEC section 3):
    its settings, its ``steps`` per epoch (they follow the training images), the backbone (weights
    and activation) and its precision, the classes and descriptions, and the seed (the ``anchors``
    init stream); once Stage I sees images (a CE term, joint mode, best_val) also what the image
    features depend on, and in joint mode the Stage I prompt's settings."""
    cfg, task = trainer.cfg, trainer.task
    names = ["seed", "n_anchors", "anchor_lr", "anchor_epochs", "momentum", "weight_decay", "warmup_epochs",
             "warmup_lr", "mse_weight", "n_descriptions", "truncate", "stage1_mode", "stage1_ce_weight",
             "stage1_select"]
    if cfg.stage1_ce_weight > 0 or cfg.stage1_mode == "joint" or cfg.stage1_select == "best_val":
        names += ["anchor_batch_size", "shots", "train_views", "crop_scale", "flip", "eval_split", "protocol"]
    if cfg.stage1_mode == "joint":
        names += ["stage1_prompt_ce_weight", "stage1_gumbel_tau", "stage1_n_ctx", "eos_index"]
    key = {k: getattr(cfg, k) for k in names}
    key.update(backbone=trainer.backbone.name, weights=trainer.backbone.weights_id,
               activation=trainer.backbone.activation, precision=trainer.precision,
               dataset=task.dataset, classes=task.classnames, descriptions=str(task.descriptions_path),
               steps_per_epoch=steps)
    return Path(cfg.cache_dir).expanduser() / "stage1" / f"{key_digest(key)}.pt"


def stage1_provenance(trainer: Trainer) -> dict:
    """What a Stage I cache file's header records of where its anchors come from."""
    cfg = trainer.cfg
    return {"backbone": trainer.backbone.name, "weights": trainer.backbone.weights_id, "dataset": trainer.task.dataset,
            "seed": cfg.seed, "n_anchors": cfg.n_anchors, "anchor_epochs": cfg.anchor_epochs}
