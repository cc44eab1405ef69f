"""AnchorOPT's Stage I (SPEC section 3): fit the anchors, then keep one epoch's anchors.

One Stage I step takes an image batch of ``anchor_batch_size`` and computes, over every training
class C (the reference's step per image batch computes every class's anchor prompt)::

    mse_weight * MSE(anchor text [C, D], descriptions [C, n, D])                      (released)
      + stage1_ce_weight * CE(anchor-prompt logits of the batch)                      (logs)
      + stage1_prompt_ce_weight * CE(Stage I prompt logits of the batch)   (stage1_mode=joint, logs)

The released ``coop_pretrain_anchor.py`` trains the first term only. The reference's shipped anchors
(``anchor_weights/*/log.txt``) came from an unreleased trainer, ``CoOp_dyntoken_1anchor_template``,
that trains the anchors, a CoOp+AnchorOPT prompt's soft tokens and its position logits in one SGD
optimiser with ``ANCHOR_CE_WEIGHT``, ``PROMPT_CE_WEIGHT``, ``ANCHOR_MSE_WEIGHT`` and ``TEMP``; only the
anchors are kept (the Stage II trainer loads ``anchor_prompt_learner`` alone). The second and third
terms reconstruct it from those logs; SPEC section 9 rows 27-31 list the guesses.

``stage1_select: best_val`` scores the anchor prompt on the val images of the trained classes
after every epoch and keeps the best epoch's anchors (the first on ties); ``last`` keeps the last.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from anchoropt.engine import EpochCallback, Stepper, stream_generator
from anchoropt.prompts import AnchorOPTPrompt, clip_logits, normal_init, stage1_loss

if TYPE_CHECKING:
    from anchoropt.methods.anchoropt import AnchorOPTMethod


class Stage1:
    """Stage I of one :class:`~anchoropt.methods.anchoropt.AnchorOPTMethod`: its steps, its optimiser
    (the method's anchor stepper; joint: one SGD over anchors, soft tokens and position logits, as the
    logs' single optimiser) and the epoch it keeps."""

    def __init__(self, method: AnchorOPTMethod):
        self.method, self.trainer, self.cfg = method, method.trainer, method.cfg
        self.prompt = joint_prompt(method) if self.cfg.stage1_mode == "joint" else None
        if self.prompt is None:
            self.stepper = method.anchor_stepper
        else:
            self.stepper = Stepper.sgd([method.anchor.anchors, self.prompt.ctx, self.prompt.position],
                                       self.cfg.anchor_lr, self.cfg)
        self.best: tuple[float, int, torch.Tensor] | None = None  # (val accuracy, 1-based epoch, anchors)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, Stepper]:
        """The loss of the module docstring on ``batch`` (features ``[B, D]``, labels ``[B]``)."""
        m, t, cfg = self.method, self.trainer, self.cfg
        feats, labels = batch
        names = t.task.classnames
        text = m.anchor_text(names)
        loss = stage1_loss(text, m.description_targets(), cfg.mse_weight)
        if cfg.stage1_ce_weight > 0:
            loss = loss + cfg.stage1_ce_weight * F.cross_entropy(clip_logits(feats, text, t.logit_scale), labels)
        if self.prompt is not None:
            tokens = t.tokens(names, self.prompt.n_block, self.prompt.rest)
            prompt_text = self.prompt(t.encoder, tokens, m.anchor.anchors).float()
            loss = loss + cfg.stage1_prompt_ce_weight * F.cross_entropy(
                clip_logits(feats, prompt_text, t.logit_scale), labels)
        m.forget_teacher()
        return loss, self.stepper

    def run(self, steps: int, on_epoch: EpochCallback | None = None) -> int:
        """Stage I to completion; the anchors left are the kept epoch's. Returns that epoch (1-based).
        ``on_epoch`` gets each epoch (phase ``stage1``, its mean loss), e.g. ``anchoropt train``'s progress."""
        t, cfg = self.trainer, self.cfg

        def plan(epoch: int):
            return [lambda b=b: self.step(b) for b in t.image_batches(epoch, cfg.anchor_batch_size, "stage1_batches")]

        if self.prompt is not None:
            self.prompt.train()
        def after_epoch(epoch: int, info: dict) -> None:
            if cfg.stage1_select == "best_val":
                self.score_epoch(epoch, info)
            if on_epoch is not None:
                on_epoch(epoch, info)

        t.run_loop("stage1", cfg.anchor_epochs, plan, [self.stepper], after_epoch)
        if self.best is None:
            return cfg.anchor_epochs
        anchors = self.method.anchor.anchors
        anchors.data.copy_(self.best[2])
        self.method.forget_teacher()
        return self.best[1]

    @torch.no_grad()
    def score_epoch(self, epoch: int, info: dict) -> None:
        """``best_val``: the anchor prompt's accuracy on the val images of the trained classes; keeps
        the anchors of the best epoch so far."""
        m, t = self.method, self.trainer
        val = t.task.val
        logits = clip_logits(val.features.to(t.device), m.anchor_text(val.classnames), t.logit_scale)
        acc = (logits.argmax(dim=-1) == val.labels.to(t.device)).float().mean().item()
        if self.best is None or acc > self.best[0]:
            self.best = (acc, epoch + 1, m.anchor.anchors.detach().clone())


def joint_prompt(method: AnchorOPTMethod) -> AnchorOPTPrompt:
    """The joint mode's throwaway CoOp+AnchorOPT prompt: ``stage1_n_ctx`` soft tokens N(0, 0.02) and
    N(0, 1) position logits from the run's ``stage1_*`` streams, Gumbel temperature
    ``stage1_gumbel_tau``, the anchors receiving its gradient. It depends on no Stage II setting but
    ``eos_index``, so Stage I stays the same for every base, as the reference's anchors."""
    t, cfg = method.trainer, method.cfg
    ctx = normal_init(cfg.stage1_n_ctx, t.width, stream_generator(cfg.seed, "stage1_soft_tokens"))
    n_block = ctx.shape[0] + cfg.n_anchors
    position = torch.randn(n_block, n_block, generator=stream_generator(cfg.seed, "stage1_positions"))
    eos_shift = cfg.n_anchors if cfg.eos_index == "reference" else 0
    return AnchorOPTPrompt(ctx, position, stream_generator(cfg.seed, "stage1_gumbel"), cfg.stage1_gumbel_tau,
                           eos_shift=eos_shift, anchor_grad=True).to(t.device)
