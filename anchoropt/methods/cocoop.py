"""CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022),
CoCoOp+ATPrompt and CoCoOp+AnchorOPT.

A meta-net on the frozen image feature shifts the soft tokens per image: ``ctx_i = ctx + meta(x_i)``
(the shift is added to every soft token), and image i is scored against text features encoded with
``ctx_i``. Reference: ATPrompt's ``trainers/cocoop.py``, ``cocoop_atp.py`` and ``cocoop_anchoropt.py``; image
features are the cached frozen ones (the image tower is not prompted).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.config import ConfigError
from anchoropt.engine import Stepper, Trainer, stream_generator
from anchoropt.methods.anchoropt import AnchorOPT
from anchoropt.methods.atprompt import CoOpATP
from anchoropt.methods.coop import CoOp
from anchoropt.prompts import CoOpPrompt

MAX_SEQUENCES = 4096  # text sequences (images x classes) encoded at once: bounds evaluation memory


class MetaNet(nn.Module):
    """``Linear(D, D // ratio) - ReLU - Linear(D // ratio, d)``: normalised image features ``[B, D]``
    -> shift ``[B, d]`` of the soft tokens (reference ``meta_net``). Initialised as ``nn.Linear``
    (kaiming-uniform weights, uniform biases, bound ``1 / sqrt(fan_in)``) from ``generator``.

    Raises:
        ConfigError: ``D // ratio`` is 0.
    """

    def __init__(self, dim: int, width: int, ratio: int, generator: torch.Generator):
        super().__init__()
        hidden = dim // ratio
        if hidden < 1:
            raise ConfigError(f"meta_net_ratio={ratio} leaves no hidden unit for {dim}-dim image features")
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, width)
        for layer in (self.linear1, self.linear2):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(F.normalize(image_features, dim=-1))))


def build_meta_net(trainer: Trainer) -> MetaNet:
    """The run's meta-net, from image feature dim to token width, drawn from the ``meta_net`` stream."""
    cfg = trainer.cfg
    return MetaNet(trainer.train_features.shape[-1], trainer.width, cfg.meta_net_ratio,
                   stream_generator(cfg.seed, "meta_net")).to(trainer.device)


def shifted_ctx(prompt: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Per-image context ``ctx + meta(x_i)`` of a prompt learner with ``ctx [M, d]`` and
    ``meta_net``: image features ``[B, D]`` -> ``[B, M, d]``."""
    return prompt.ctx + prompt.meta_net(feats).unsqueeze(1)


def conditioned_logits(feats: torch.Tensor, n_classes: int, text: Callable[[torch.Tensor], torch.Tensor],
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """``logit_scale.exp() * norm(x_i) . norm(t_ic)``: logits ``[B, C]`` of images ``feats [B, D]``
    against their own text features ``text(chunk) [b, C, D]``, in chunks of at most
    :data:`MAX_SEQUENCES` text sequences (reference ``CustomCLIP.forward``, one image at a time)."""
    out = []
    for chunk in feats.split(max(1, MAX_SEQUENCES // n_classes)):
        out.append(torch.einsum("bd,bcd->bc", F.normalize(chunk, dim=-1), F.normalize(text(chunk), dim=-1)))
    return logit_scale.exp() * torch.cat(out)


class CoCoOp(CoOp):
    """CoCoOp: CoOp's soft tokens (``ctx_init`` or N(0, 0.02)) shifted per image by the meta-net;
    soft tokens and meta-net trained with cross-entropy."""

    name = "cocoop"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.prompt.meta_net = build_meta_net(trainer)  # part of the prompt learner, as in the reference
        self.stepper.optimizer.add_param_group({"params": list(self.prompt.meta_net.parameters())})

    def image_text(self, feats: torch.Tensor, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        """Text features ``[B, C, D]``: ``SOS (ctx + meta(x_i)) CLS . EOS`` for each image i."""
        t = self.trainer
        tokens = t.tokens(classnames, self.prompt.n_block, self.prompt.rest)
        return t.encoder.encode_per_image(tokens, shifted_ctx(self.prompt, feats)).float()

    def logits(self, feats: torch.Tensor, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        return conditioned_logits(feats, len(classnames), lambda f: self.image_text(f, classnames, dataset),
                                  self.trainer.logit_scale)


class CoCoOpATP(CoCoOp, CoOpATP):
    """CoCoOp+ATPrompt (reference ``CoCoOp_ATP``): ATPrompt's attribute part (CoOp+ATPrompt's
    :class:`~anchoropt.methods.atprompt.AttributeTokens`) before the per-image context,
    ``SOS [a_1] w_1 .. [a_A] w_A (ctx + meta(x_i)) CLS . EOS``: the meta-net shifts the context
    only. Context, meta-net and attribute soft tokens trained with CE."""

    name = "cocoop_atp"

    def image_text(self, feats: torch.Tensor, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        t = self.trainer
        block = self.attributes(shifted_ctx(self.prompt, feats), dataset or t.task.dataset)  # [B, k, d]
        return t.encoder.encode_per_image(t.tokens(classnames, block.shape[1], CoOpPrompt.rest), block).float()


class CoCoOpAnchorOPT(AnchorOPT):
    """CoCoOp+AnchorOPT (reference ``trainers/cocoop_anchoropt.py``): the Stage II block is
    ``W @ [ctx + meta(x_i); anchors]`` per image (the shift moves the soft tokens, not the anchors;
    one W per forward pass, shared by the batch); loss, teacher and novel ensemble are AnchorOPT's.

    ``cocoop_anchoropt_trains``: ``ctx`` (reference: its optimiser holds the soft tokens only, so
    the meta-net and the position logits keep their init; W is still resampled every forward
    pass) or ``all`` (soft tokens, meta-net and, unless an ablation fixes it, W).
    """

    name = "cocoop_anchoropt"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.prompt.meta_net = build_meta_net(trainer)
        trainable = [p for g in self.prompt_stepper.optimizer.param_groups for p in g["params"]]
        if self.cfg.cocoop_anchoropt_trains == "all":
            trainable += list(self.prompt.meta_net.parameters())
        else:
            trainable = [self.prompt.ctx]
            for p in [self.prompt.position, *self.prompt.meta_net.parameters()]:
                p.requires_grad_(False)
        self.prompt_stepper = Stepper.sgd(trainable, self.cfg.lr, self.cfg)

    def image_text(self, feats: torch.Tensor, classnames: list[str],
                   position: torch.Tensor | None = None) -> torch.Tensor:
        """Text features ``[B, C, D]`` of the Stage II prompt of each image; ``position``: a given W."""
        t, prompt = self.trainer, self.prompt
        tokens = t.tokens(classnames, prompt.n_block, prompt.rest)
        position = self.fixed_position if position is None else position
        w = prompt.position_matrix() if position is None else position
        anchors = self.anchor.anchors.detach().expand(len(feats), -1, -1)
        block = w @ torch.cat([shifted_ctx(prompt, feats), anchors], dim=1)  # [B, M+N, d]
        return t.encoder.encode_per_image(tokens, block, tokens.eos_index - prompt.eos_shift).float()

    def prompt_logits(self, feats: torch.Tensor, classnames: list[str],
                      position: torch.Tensor | None = None) -> torch.Tensor:
        if position is None and self.fixed_position is None:  # one W sample for all chunks of this call
            position = self.prompt.position_matrix()
        return conditioned_logits(feats, len(classnames), lambda f: self.image_text(f, classnames, position),
                                  self.trainer.logit_scale)
