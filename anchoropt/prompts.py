"""Prompt learners: CoOp context, the AnchorOPT anchor prompt (Stage I) and the
AnchorOPT prompt with learned positions (Stage II). SPEC sections 2 to 4.

Each learner owns its trainable tensors and turns a :class:`ClassTokens` (one
class set, tokenised once) into text features ``[C, D]`` through the shared
:class:`TextEncoder`. The deep (MaPLe-style) variant of SPEC section 6 adds per-layer soft tokens
through a hook on that encoder (:mod:`anchoropt.methods.maple`).

Every random draw (initial tensors, Gumbel noise) comes from a ``torch.Generator`` the caller
seeds, never from the global RNG, so a run's numbers do not depend on what ran before it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anchoropt.errors import brief
from anchoropt.text import ClassTokens, TextEncoder

INIT_STD = 0.02  # N(0, 0.02) init of soft tokens and anchors (SPEC section 2)


def normal_init(rows: int, width: int, generator: torch.Generator, std: float = INIT_STD) -> torch.Tensor:
    """``[rows, width]`` drawn from N(0, std^2) with ``generator`` (CPU), as CoOp's ``nn.init.normal_``."""
    return torch.randn(rows, width, generator=generator) * std


@torch.no_grad()
def phrase_init(phrase: str, tokenizer, embedding: nn.Embedding) -> torch.Tensor:
    """CoOp's ``ctx_init``: the token embeddings ``[M, d]`` of ``phrase``'s M BPE tokens (SOS and EOS
    left out), on CPU. Raises ValueError for a phrase without tokens."""
    n = len(tokenizer.encode(phrase))
    if n == 0:
        raise ValueError(f"ctx_init {brief(phrase)} has no tokens")
    tokens = tokenizer([phrase]).to(embedding.weight.device)
    return embedding(tokens)[0, 1:1 + n].float().cpu()


class CoOpPrompt(nn.Module):
    """``SOS [V_1]..[V_M] CLS . EOS`` with M shared soft tokens ``ctx [M, d]`` (CoOp), started at
    ``init [M, d]`` (:func:`normal_init` or :func:`phrase_init`)."""

    rest = "{}."

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(init.clone())

    @property
    def n_block(self) -> int:
        return self.ctx.shape[0]

    def forward(self, encoder: TextEncoder, tokens: ClassTokens) -> torch.Tensor:
        """Returns text features ``[C, D]`` for the C classes of ``tokens``."""
        return encoder.encode(tokens, self.ctx)


class AnchorPrompt(nn.Module):
    """Stage I anchor prompt ``SOS [A_1]..[A_N] of CLS . EOS`` with anchors ``[N, d]`` started at
    ``init``. Its feature is read at the real EOS of this sequence, also under
    ``eos_index: reference`` (the reference reads early only in the Stage II prompt)."""

    rest = "of {}."

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.anchors = nn.Parameter(init.clone())

    @property
    def n_block(self) -> int:
        return self.anchors.shape[0]

    def forward(self, encoder: TextEncoder, tokens: ClassTokens) -> torch.Tensor:
        """Returns text features ``[C, D]``."""
        return encoder.encode(tokens, self.anchors)


def gumbel_hard(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Straight-through Gumbel-softmax over the last dim with noise from ``generator`` (CPU):
    forward one-hot ``argmax(logits + g)``, gradient of ``softmax((logits + g) / tau)``,
    ``g = -log(Exp(1))`` (the formula of torch.nn.functional.gumbel_softmax with hard=True)."""
    noise = -torch.empty(logits.shape).exponential_(generator=generator).log()
    soft = ((logits + noise.to(logits.device, logits.dtype)) / tau).softmax(dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


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

    Trainable: soft tokens ``ctx [M, d]`` (started at ``init``) and position logits
    ``P [M+N, M+N]`` (started at ``position``, reference init N(0, 1)). Anchors ``[N, d]`` come from Stage I and
    are detached here. ``W`` is a straight-through Gumbel sample (:func:`gumbel_hard`, noise from
    ``generator``) in training; at evaluation ``one_hot(argmax P)`` (``position_eval="argmax"``)
    or a fresh sample (``"sample"``, reference).

    Args:
        eos_shift: positions subtracted from the EOS index; ``n_anchors`` reproduces the
            reference's early read (``eos_index: reference``), 0 is correct.
        anchor_grad: the anchors receive this prompt's gradient (joint Stage I, SPEC section 9
            row 29); Stage II detaches them.
    """

    rest = "{}."

    def __init__(self, init: torch.Tensor, position: torch.Tensor, generator: torch.Generator,
                 gumbel_tau: float = 1.0, position_eval: str = "argmax", eos_shift: int = 0,
                 anchor_grad: bool = False):
        super().__init__()
        if position_eval not in ("argmax", "sample"):
            raise ValueError(f"position_eval must be 'argmax' or 'sample', got '{position_eval}'")
        if position.shape[0] <= init.shape[0] or position.shape[0] != position.shape[1]:
            raise ValueError(f"position logits must be square [M+N, M+N] with N >= 1, got {tuple(position.shape)} "
                             f"for {init.shape[0]} soft tokens")
        self.ctx = nn.Parameter(init.clone())
        self.position = nn.Parameter(position.clone())
        self.generator = generator
        self.gumbel_tau = gumbel_tau
        self.position_eval = position_eval
        self.eos_shift = eos_shift
        self.anchor_grad = anchor_grad

    @property
    def n_block(self) -> int:
        return self.position.shape[0]

    def position_matrix(self) -> torch.Tensor:
        """``W [M+N, M+N]``, each row one-hot: row i picks the token placed at position i."""
        if self.training or self.position_eval == "sample":
            return gumbel_hard(self.position, self.gumbel_tau, self.generator)
        return F.one_hot(self.position.argmax(dim=-1), self.n_block).to(self.position.dtype)

    def forward(self, encoder: TextEncoder, tokens: ClassTokens, anchors: torch.Tensor,
                position: torch.Tensor | None = None) -> torch.Tensor:
        """Returns text features ``[C, D]``; ``anchors`` is ``[N, d]`` (gradient propagated only with
        ``anchor_grad``); ``position``: a given ``W`` instead of :meth:`position_matrix`."""
        position = self.position_matrix() if position is None else position
        block = position @ torch.cat([self.ctx, anchors if self.anchor_grad else anchors.detach()], dim=0)
        return encoder.encode(tokens, block, tokens.eos_index - self.eos_shift)


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
