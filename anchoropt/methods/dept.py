"""DePT (Zhang et al., "DePT: Decoupled Prompt Tuning", CVPR 2024) on CoOp's prompt, DePT+ATPrompt
and DePT+AnchorOPT.

DePT keeps the prompt's CLIP logits and adds a head trained on the training (base) classes: a
channel-wise transform (cwT: a per-channel scale and shift, one for image and one for text
features) and a linear classifier over those classes, fed the transformed image features and the
transformed text features of each image's class. As the reference (ATPrompt's ``trainers/dept.py``,
``trainers/dept_anchoropt.py``, settings of ``train.py`` ``TRAINER.LINEAR_PROBE``/``FILM``):

- loss ``(1 - w) * CE(clip logits) + w * CE(head logits of [text[labels]; image] over 2B rows)``,
  with ``w = dept_weight``; the head sees the raw (unnormalised) features;
- trained classes are scored by ``(1 - w) * clip logits + w * head(image)``; unseen classes (novel,
  cross-dataset targets) by the CLIP logits alone (the head knows only the trained classes);
- one SGD optimiser for the prompt and the head, at the same learning rate (Dassl's
  ``build_optimizer`` over every trainable tensor); ``dept_head_lr_mult`` scales the head's rate
  (DePT's own code: 6.5, ``OPTIM.STAGED_LR`` with ``LR_EXP 6.5``; SPEC section 9).

DePT+ATPrompt is the same head on CoOp+ATPrompt's prompt (reference ``trainers/dept_atp.py``).
DePT+AnchorOPT is CoOp+AnchorOPT's prompt with this head; its loss is ``ce_weight`` times the DePT
loss (the reference's ``DePT_AnchorOPT`` trains with no KD term: ``kd_weight: 0`` reproduces it,
a positive ``kd_weight`` adds AnchorOPT's KD on the CLIP logits), and unseen classes are scored
by AnchorOPT's ensemble of those CLIP logits with the anchor prompt's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.engine import Stepper, Trainer, stream_generator
from anchoropt.methods.anchoropt import AnchorOPT
from anchoropt.methods.atprompt import CoOpATP
from anchoropt.methods.coop import CoOp
from anchoropt.prompts import clip_logits
from anchoropt.task import EvalSet


class DePTHead(nn.Module):
    """DePT's head: channel-wise transforms ``x * scale + shift`` of image and text features
    (``[D]`` each, started at 1 and 0) and a linear classifier ``[C, D]`` + ``[C]`` over the C
    training classes, started as ``torch.nn.Linear``'s default, ``U(-1/sqrt(D), 1/sqrt(D))``, with
    draws from ``generator``."""

    def __init__(self, dim: int, n_classes: int, generator: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(dim)
        self.image_scale, self.image_shift = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.text_scale, self.text_shift = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.class_weight = nn.Parameter((torch.rand(n_classes, dim, generator=generator) * 2 - 1) * bound)
        self.class_bias = nn.Parameter((torch.rand(n_classes, generator=generator) * 2 - 1) * bound)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Head logits ``[B, C]`` of raw image features ``[B, D]``."""
        return F.linear(image_features * self.image_scale + self.image_shift, self.class_weight, self.class_bias)

    def train_logits(self, image_features: torch.Tensor, text_features: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training logits ``[2B, C]`` and their labels ``[2B]``: the classifier on
        ``[cwT_text(text_features[labels]); cwT_image(image_features)]``.

        Args:
            image_features: ``[B, D]`` raw; text_features: ``[C, D]`` raw, the prompt's, with
                gradient; labels: ``[B]``.
        """
        text = text_features[labels] * self.text_scale + self.text_shift
        image = image_features * self.image_scale + self.image_shift
        return F.linear(torch.cat([text, image]), self.class_weight, self.class_bias), torch.cat([labels, labels])


def dept_loss(logits: torch.Tensor, labels: torch.Tensor, head_logits: torch.Tensor, head_labels: torch.Tensor,
              weight: float) -> torch.Tensor:
    """``(1 - weight) * CE(logits [B, C], labels [B]) + weight * CE(head_logits [2B, C], head_labels [2B])``."""
    return (1 - weight) * F.cross_entropy(logits, labels) + weight * F.cross_entropy(head_logits, head_labels)


def fused_logits(logits: torch.Tensor, head_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Trained classes at test time: ``(1 - weight) * logits + weight * head_logits`` (``[N, C]``)."""
    return (1 - weight) * logits + weight * head_logits


class DePTParts:
    """What DePT adds to a base with a prompt (``self.text(classnames)``) and one stepper: the head
    (in that stepper's optimiser, at ``dept_head_lr_mult`` times its learning rate), the head's loss
    and its inference rule."""

    trainer: Trainer
    head: DePTHead

    def add_head(self, stepper: Stepper) -> None:
        t = self.trainer
        dim = t.train_features.shape[-1]  # the image (= text) embedding width D
        self.head = DePTHead(dim, len(t.task.classnames), stream_generator(t.cfg.seed, "dept_head")).to(t.device)
        stepper.optimizer.add_param_group({"params": list(self.head.parameters()), "lr_mult": t.cfg.dept_head_lr_mult})

    def put_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        """The head's tensors are saved as ``head.<key>``."""
        super().put_tensors({k: v for k, v in saved.items() if not k.startswith("head.")})
        self.head.load_state_dict({k[len("head."):]: v for k, v in saved.items() if k.startswith("head.")})

    def head_step_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(DePT loss, CLIP logits [B, C])`` of an image batch ``feats [B, D]``, ``labels [B]``."""
        t = self.trainer
        text = self.text(t.task.classnames)
        logits = clip_logits(feats, text, t.logit_scale)
        head_logits, head_labels = self.head.train_logits(feats, text, labels)
        return dept_loss(logits, labels, head_logits, head_labels, t.cfg.dept_weight), logits

    def with_head(self, logits: torch.Tensor, feats: torch.Tensor, ev: EvalSet) -> torch.Tensor:
        """``logits [N, C]`` of ``ev`` fused with the head's when ``ev`` holds the trained classes.

        Raises:
            ValueError: a seen class set that is not the head's classes in the head's order.
        """
        if not ev.seen:
            return logits
        if ev.classnames != self.trainer.task.classnames:
            raise ValueError("DePT's head scores the training classes in training order; this evaluation set "
                             f"holds {len(ev.classnames)} other or reordered classes")
        return fused_logits(logits, self.head(feats), self.trainer.cfg.dept_weight)


class DePT(DePTParts, CoOp):
    """DePT on CoOp's soft tokens (reference ``DePT`` trainer)."""

    name = "dept"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.add_head(self.stepper)

    def modules(self) -> list[nn.Module]:
        return [*super().modules(), self.head]

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        return self.head_step_loss(*batch)[0], self.stepper

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        feats = ev.features.to(self.trainer.device)
        logits = clip_logits(feats, self.text(ev.classnames, ev.dataset), self.trainer.logit_scale)
        return {"acc": self.with_head(logits, feats, ev)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**super().tensors(), **{f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}}

    def updates(self) -> dict[str, int]:
        return {"prompt": self.stepper.updates, "head": self.stepper.updates}


class DePTATP(DePT, CoOpATP):
    """DePT+ATPrompt: DePT's head on CoOp+ATPrompt's prompt (attribute tokens and words, then the
    soft tokens; reference ``DePT_ATP`` trainer); the attribute tokens train with the prompt."""

    name = "dept_atp"


class DePTAnchorOPT(DePTParts, AnchorOPT):
    """DePT+AnchorOPT: CoOp+AnchorOPT's prompt (soft tokens, anchors, W) plus DePT's head
    (reference ``DePT_AnchorOPT`` trainer)."""

    name = "dept_anchoropt"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.add_head(self.prompt_stepper)

    def modules(self) -> list[nn.Module]:
        return [*super().modules(), self.head]

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        """``ce_weight * DePT loss + kd_weight * KD(CLIP logits)`` (the reference: no KD term)."""
        feats, labels = batch
        loss, logits = self.head_step_loss(feats, labels)
        return self.cfg.ce_weight * loss + self.kd_term(logits, feats), self.prompt_stepper

    def prompt_scores(self, ev: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = super().prompt_scores(ev)
        return self.with_head(logits, feats, ev), feats

    def tensors(self) -> dict[str, torch.Tensor]:
        out = super().tensors()
        for k in self.head.state_dict():  # AnchorOPTMethod.tensors merges the modules' keys unprefixed
            out[f"head.{k}"] = out.pop(k)
        return out

    def updates(self) -> dict[str, int]:
        return {**super().updates(), "head": self.prompt_stepper.updates}
