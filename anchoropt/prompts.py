"""Prompt learners: CoOp context, the AnchorOPT anchor prompt (Stage I) and the
AnchorOPT prompt with learned positions (Stage II). SPEC sections 2 to 4.

Each learner owns its trainable tensors and turns a :class:`ClassTokens` (one
class set, tokenised once) into text features ``[C, D]`` through the shared
:class:`TextEncoder`. The deep (MaPLe-style) variant of SPEC section 6 would add
per-layer soft tokens here, as another learner with the same interface.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.text import ClassTokens, TextEncoder

INIT_STD = 0.02  # N(0, 0.02) init of soft tokens and anchors (SPEC section 2)


def _normal(*shape: int, std: float = INIT_STD) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


class CoOpPrompt(nn.Module):
    """``SOS [V_1]..[V_M] CLS . EOS`` with M = ``n_ctx`` shared soft tokens ``[M, d]`` (CoOp)."""

    rest = "{}."

    def __init__(self, n_ctx: int, width: int):
        super().__init__()
        self.ctx = _normal(n_ctx, width)

    @property
    def n_block(self) -> int:
        return self.ctx.shape[0]

    def forward(self, encoder: TextEncoder, tokens: ClassTokens) -> torch.Tensor:
        """Returns text features ``[C, D]`` for the C classes of ``tokens``."""
        return encoder(tokens.assemble(self.ctx), tokens.eos_index)


class AnchorPrompt(nn.Module):
    """Stage I anchor prompt ``SOS [A_1]..[A_N] of CLS . EOS`` with anchors ``[N, d]``.

    Args:
        eos_shift: positions subtracted from the EOS index; ``n_anchors`` reproduces
            the reference code's early read (``eos_index: reference``), 0 is correct.
    """

    rest = "of {}."

    def __init__(self, n_anchors: int, width: int, eos_shift: int = 0):
        super().__init__()
        self.anchors = _normal(n_anchors, width)
        self.eos_shift = eos_shift

    @property
    def n_block(self) -> int:
        return self.anchors.shape[0]

    def forward(self, encoder: TextEncoder, tokens: ClassTokens) -> torch.Tensor:
        """Returns text features ``[C, D]``."""
        return encoder(tokens.assemble(self.anchors), tokens.eos_index - self.eos_shift)


def stage1_loss(pred: torch.Tensor, targets: torch.Tensor, mse_weight: float) -> torch.Tensor:
    """Stage I loss (SPEC section 3): ``mse_weight * MSE(norm(pred), targets)``.

    Args:
        pred: ``[C, D]`` anchor-prompt features (normalised here).
        targets: ``[C, n_desc, D]`` L2-normalised description features.
    """
    pred = F.normalize(pred, dim=-1).unsqueeze(1).expand_as(targets)
    return mse_weight * F.mse_loss(pred, targets)


class AnchorOPTPrompt(nn.Module):
    """Stage II prompt ``SOS W·([V_1]..[V_M] [A_1]..[A_N]) CLS . EOS`` (SPEC section 4).

    Trainable: soft tokens ``ctx [M, d]`` and position logits ``P [M+N, M+N]`` (init
    N(0, 1)). Anchors ``[N, d]`` come from Stage I and are detached here.
    ``W = gumbel_softmax(P, tau, hard=True)`` in training (rows one-hot, straight-through
    gradients, torch.nn.functional.gumbel_softmax); at evaluation ``one_hot(argmax P)``
    (``position_eval="argmax"``) or a fresh Gumbel sample (``"sample"``, reference).
    """

    rest = "{}."

    def __init__(self, n_ctx: int, n_anchors: int, width: int, gumbel_tau: float = 1.0,
                 position_eval: str = "argmax", eos_shift: int = 0):
        super().__init__()
        if position_eval not in ("argmax", "sample"):
            raise ValueError(f"position_eval must be 'argmax' or 'sample', got '{position_eval}'")
        self.ctx = _normal(n_ctx, width)
        self.position = nn.Parameter(torch.randn(n_ctx + n_anchors, n_ctx + n_anchors))
        self.gumbel_tau = gumbel_tau
        self.position_eval = position_eval
        self.eos_shift = eos_shift

    @property
    def n_block(self) -> int:
        return self.position.shape[0]

    def position_matrix(self) -> torch.Tensor:
        """``W [M+N, M+N]``, each row one-hot: row i picks the token placed at position i."""
        if self.training or self.position_eval == "sample":
            return F.gumbel_softmax(self.position, tau=self.gumbel_tau, hard=True, dim=-1)
        return F.one_hot(self.position.argmax(dim=-1), self.n_block).to(self.position.dtype)

    def forward(self, encoder: TextEncoder, tokens: ClassTokens, anchors: torch.Tensor) -> torch.Tensor:
        """Returns text features ``[C, D]``; ``anchors`` is ``[N, d]`` (gradient not propagated)."""
        block = self.position_matrix() @ torch.cat([self.ctx, anchors.detach()], dim=0)
        return encoder(tokens.assemble(block), tokens.eos_index - self.eos_shift)


def kd_loss(logits_prompt: torch.Tensor, logits_anchor: torch.Tensor, temperature: float) -> torch.Tensor:
    """Reference KD loss (SPEC section 4).

    ``ens = (logits_anchor + logits_prompt) / 2`` (detached);
    ``KL(softmax(ens/T) || softmax(logits_prompt/T))`` summed over all elements, times ``T^2 / (B*C)``.

    Args:
        logits_prompt, logits_anchor: ``[B, C]``.
    """
    ens = ((logits_anchor + logits_prompt) / 2).detach()
    b, c = logits_prompt.shape
    kl = F.kl_div(F.log_softmax(logits_prompt / temperature, dim=-1), F.log_softmax(ens / temperature, dim=-1),
                  reduction="sum", log_target=True)
    return kl * temperature ** 2 / (b * c)


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``logit_scale.exp() * norm(img) @ norm(txt).T``: ``[B, D] x [C, D] -> [B, C]`` (CLIP)."""
    return logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
