"""CLIP's text encoder over token-embedding sequences (SPEC section 2).

Prompt learners build prompts as sequences of token embeddings, part learned
and part fixed. :class:`ClassTokens` tokenises a prompt pattern once per class
set and keeps the fixed embeddings around the learned block; :class:`TextEncoder`
runs the frozen transformer on such sequences and reads the feature at EOS.

Truncation: CLIP's text mask is causal, so the EOS output depends only on the
positions up to EOS. Cutting every sequence to the longest EOS position + 1,
with the positional embedding and the mask sliced to match, gives the same
features and runs the transformer on far fewer positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Frozen CLIP text tower applied to embeddings instead of token ids.

    Args:
        clip: an ``open_clip.CLIP`` model (weights are shared, not copied).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, embeds: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """Encode prompts.

        Args:
            embeds: ``[B, L, d_model]`` token embeddings, ``L <= context_length``.
                Pass sequences already cut to ``eos_index.max() + 1`` for speed.
            eos_index: ``[B]`` long, position of the feature to read in each sequence.

        Returns:
            ``[B, embed_dim]`` text features (not normalised).
        """
        length = embeds.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = embeds.to(cast) + self.positional_embedding[:length].to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


def prompt_classname(name: str) -> str:
    """A class name as every prompt writes it: underscores become spaces (CoOp, Dassl and the
    reference all prompt with ``name.replace("_", " ")``)."""
    return name.replace("_", " ")


def token_count(tokenizer, text: str) -> int:
    """Tokens ``text`` takes in CLIP's context: its BPE tokens plus SOS and EOS (uncut)."""
    return len(tokenizer.encode(text)) + 2


@dataclass
class ClassTokens:
    """Fixed token embeddings of one prompt pattern for a set of classes.

    The pattern is ``SOS <block of k learned vectors> <rest>``; :meth:`assemble` puts
    the learned block in. Build with :meth:`build`.

    Attributes:
        prefix: ``[C, 1, d]`` SOS embedding; suffix: ``[C, S, d]`` embeddings after the
        block (class name, full stop, EOS, padding up to the cut); eos_index: ``[C]`` long;
        n_block: k.
    """

    prefix: torch.Tensor
    suffix: torch.Tensor
    eos_index: torch.Tensor
    n_block: int

    @classmethod
    @torch.no_grad()
    def build(cls, classnames: list[str], n_block: int, rest: str, tokenizer, embedding: nn.Embedding,
              truncate: bool = True) -> "ClassTokens":
        """Tokenise ``"X"*k + rest.format(name)`` per class once, the name as :func:`prompt_classname`
        writes it.

        Args:
            classnames: C class names, in label order.
            n_block: k, learned positions right after SOS.
            rest: format string for what follows the block (``"{}."``, ``"of {}."``).
            tokenizer: open_clip tokenizer; embedding: the CLIP token embedding.
            truncate: cut to the longest EOS + 1 (exact, SPEC section 2).

        Raises:
            ValueError: a prompt needs more tokens than the tokenizer's context (SOS and EOS
                included; exactly the context length fits), naming the class.
        """
        placeholder = " ".join(["X"] * n_block)
        texts = [f"{placeholder} {rest.format(prompt_classname(name))}".strip() for name in classnames]
        context = tokenizer.context_length
        for name, text in zip(classnames, texts):
            if token_count(tokenizer, text) > context:
                raise ValueError(f"prompt for class '{name}' does not fit CLIP's {context}-token context "
                                 f"(needs {token_count(tokenizer, text)} tokens)")
        tokens = tokenizer(texts).to(embedding.weight.device)
        eos_index = tokens.argmax(dim=-1)
        length = int(eos_index.max()) + 1 if truncate else tokens.shape[1]
        emb = embedding(tokens[:, :length]).float()
        return cls(emb[:, :1], emb[:, 1 + n_block:], eos_index, n_block)

    def __len__(self) -> int:
        return self.prefix.shape[0]

    def select(self, idx: torch.Tensor) -> "ClassTokens":
        """The same pattern for the classes ``idx`` only."""
        return ClassTokens(self.prefix[idx], self.suffix[idx], self.eos_index[idx], self.n_block)

    def assemble(self, block: torch.Tensor) -> torch.Tensor:
        """Insert the learned block. ``block``: ``[k, d]`` (shared) or ``[C, k, d]``; returns ``[C, L, d]``."""
        if block.dim() == 2:
            block = block.unsqueeze(0).expand(len(self), -1, -1)
        return torch.cat([self.prefix, block.to(self.prefix.dtype), self.suffix], dim=1)
