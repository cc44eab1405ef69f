"""ATPrompt (Li et al. 2025, "Attribute-anchored textual prompt") as the block every ``*_atp``
method puts before the class name, and CoOp+ATPrompt.

The prompt (reference ``trainers/coop_atp.py``, class name at the end)::

    SOS [a_1]x n_att w_1  [a_2]x n_att w_2 ... [a_A]x n_att w_A  [V]x n_ctx  CLASS . EOS

``w_i``: the fixed token embeddings of attribute word ``i`` (:mod:`anchoropt.attributes`), all its
BPE tokens (the reference keeps one token per word: SPEC section 9); ``a_i``: ``n_att`` soft tokens
of attribute slot ``i``, N(0, 0.01); ``V``: the base's context. Everything before CLASS is the
same for every class, so :class:`AttributeTokens` returns it as one block ``[k, d]`` for
``trainer.encoder.encode(tokens, block)`` (shared-prefix path), or ``[B, k, d]`` for a context
per image (CoCoOp).
"""
from __future__ import annotations

import torch
from torch import nn

from anchoropt.attributes import dataset_attributes
from anchoropt.engine import Trainer, stream_generator
from anchoropt.methods.coop import CoOp
from anchoropt.prompts import CoOpPrompt, normal_init, phrase_init

ATT_INIT_STD = 0.01  # reference: nn.init.normal_(att_vectors, std=0.01)


def scored_datasets(trainer: Trainer) -> list[str]:
    """The datasets whose prompts a run builds: the source, then (cross-dataset) each target."""
    cfg = trainer.cfg
    return [cfg.dataset, *cfg.target_list] if cfg.protocol == "cross_dataset" else [cfg.dataset]


class AttributeTokens(nn.Module):
    """ATPrompt's attribute part: soft tokens ``att[i] [n_att, d]`` of slots ``i < S`` (trained; one
    parameter per slot, so a slot no word uses gets no update, weight decay included, as the
    reference's separate ``ctx_att1..3``) and, per dataset, the fixed embeddings ``[b_i, d]`` of
    its attribute words (not in the state dict).

    ``S`` is the most words any scored dataset has. A cross-dataset target is prompted with its
    own words, slot ``i`` holding the soft tokens trained before the source's word ``i``, as the
    reference's evaluation script rebuilds the prompt for the target dataset; a slot the source
    has no word for keeps its initial tokens (the reference's unused ``ctx_att2``/``ctx_att3``).
    """

    def __init__(self, init: torch.Tensor, words: dict[str, list[torch.Tensor]]):
        """``init [S, n_att, d]``; ``words``: dataset -> its words' embeddings, at most S of them."""
        super().__init__()
        self.att = nn.ParameterList([nn.Parameter(slot.clone()) for slot in init])
        self.words = words

    @classmethod
    def build(cls, trainer: Trainer) -> "AttributeTokens":
        """From ``trainer.cfg``: ``attributes`` (or each dataset's own words), ``n_att`` soft
        tokens per slot (0: ``n_ctx``, as the reference scripts' ``N_ATT = NCTX``), drawn from
        the run's ``attribute_tokens`` stream."""
        cfg, backbone = trainer.cfg, trainer.backbone
        words = {name: [phrase_init(w, backbone.tokenizer, backbone.model.token_embedding).to(trainer.device)
                        for w in dataset_attributes(name, cfg.attributes)]
                 for name in scored_datasets(trainer)}
        slots, n_att = max(len(w) for w in words.values()), cfg.n_att or cfg.n_ctx
        init = normal_init(slots * n_att, trainer.width, stream_generator(cfg.seed, "attribute_tokens"), ATT_INIT_STD)
        return cls(init.view(slots, n_att, -1).to(trainer.device), words)

    def put(self, att: torch.Tensor) -> None:
        """Set the soft tokens of every attribute word from ``att [S, n_att, d]`` (as saved)."""
        for param, value in zip(self.att, att):
            param.data.copy_(value)

    def forward(self, ctx: torch.Tensor, dataset: str) -> torch.Tensor:
        """The learned block of ``dataset``'s prompt: ``[a_1] w_1 ... [a_A] w_A ctx``.

        Args:
            ctx: the base's context ``[n_ctx, d]``, or ``[B, n_ctx, d]`` (one per image).
        Returns:
            ``[k, d]`` or ``[B, k, d]``, ``k = A * n_att + sum_i b_i + n_ctx``.
        """
        parts = [t for att, word in zip(self.att, self.words[dataset]) for t in (att, word.to(ctx.dtype))]
        lead = ctx.shape[:-2]
        return torch.cat([p.expand(*lead, *p.shape) for p in parts] + [ctx], dim=-2)


class CoOpATP(CoOp):
    """CoOp+ATPrompt (reference ``CoOp_ATP``): CoOp's soft tokens after the attribute part, the
    context and the attribute soft tokens trained together with cross-entropy."""

    name = "coop_atp"

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.attributes = AttributeTokens.build(trainer)
        self.stepper.optimizer.add_param_group({"params": list(self.attributes.parameters())})

    def modules(self) -> list[nn.Module]:
        return [self.prompt, self.attributes]

    def text(self, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        t = self.trainer
        block = self.attributes(self.prompt.ctx, dataset or t.task.dataset)
        return t.encoder.encode(t.tokens(classnames, block.shape[0], CoOpPrompt.rest), block).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        """CoOp's ``ctx [n_ctx, d]`` and the attribute soft tokens ``att [S, n_att, d]``."""
        return {**super().tensors(), "att": torch.stack(list(self.attributes.att)).detach().cpu()}

    def put_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        super().put_tensors(saved)
        self.attributes.put(saved["att"])
