"""CLIP's text encoder over token-embedding sequences (SPEC section 2).

Prompt learners build prompts as sequences of token embeddings, part learned
and part fixed. :class:`ClassTokens` tokenises a prompt pattern once per class
set and keeps the fixed embeddings around the learned block; :class:`TextEncoder`
runs the frozen transformer on such sequences and reads the feature at EOS.

Truncation: CLIP's text mask is causal, so the EOS output depends only on the
positions up to EOS. Cutting every sequence to the longest EOS position + 1,
with the positional embedding and the mask sliced to match, gives the same
features and runs the transformer on far fewer positions.

Prefix sharing: every learner here puts one learned block, the same for all classes, right
after SOS, often followed by fixed words the same for all classes (the anchor prompt's "of"), so
positions ``0..k`` (and those words) hold the same embeddings in every class's sequence, and under
the causal mask their hidden states do not depend on what follows. :meth:`TextEncoder.encode`
runs those positions once (batch 1) and only the class-specific rest per class, its attention
reading the prefix's keys and values; forward and backward equal the per-class path up to float
rounding, and a step costs about ``suffix / (prefix + suffix)`` of the per-class transformer work.
An image-conditioned block (CoCoOp: one block per image) shares its prefix the same way across the
classes of that image (:meth:`TextEncoder.encode_per_image`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class BlockHook(Protocol):
    """Deep prompts (MaPLe, Khattak et al. 2023): called before every transformer layer ``i >= 1``
    with ``hidden [1 + n_block, d]``, the outputs of layer ``i - 1`` at SOS and the learned block
    (the same in every class's sequence: the mask is causal); returns the ``[n_block, d]`` block
    that replaces those block positions' hidden states, or None to leave them."""

    n_block: int

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None: ...


class TextEncoder(nn.Module):
    """Frozen CLIP text tower applied to embeddings instead of token ids.

    Args:
        clip: an ``open_clip.CLIP`` model (weights are shared, not copied).
        share_prefix: encode a block shared by all classes once per call (:meth:`encode`);
            used only where :func:`supports_prefix_sharing` holds for ``clip``.
    """

    def __init__(self, clip: nn.Module, share_prefix: bool = True):
        super().__init__()
        self.share_prefix = share_prefix and supports_prefix_sharing(clip)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, embeds: torch.Tensor, eos_index: torch.Tensor, replace: BlockHook | None = None) -> torch.Tensor:
        """Encode prompts.

        Args:
            embeds: ``[B, L, d_model]`` token embeddings, ``L <= context_length``.
                Pass sequences already cut to ``eos_index.max() + 1`` for speed.
            eos_index: ``[B]`` long, position of the feature to read in each sequence.
            replace: deep prompts (:data:`BlockHook`); the block is the ``k`` positions after SOS,
                the same in every sequence.

        Returns:
            ``[B, embed_dim]`` text features (not normalised).
        """
        length = embeds.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = embeds.to(cast) + self.positional_embedding[:length].to(cast)
        mask = self.attn_mask[:length, :length]
        if replace is None:
            return self._read(self.transformer(x, attn_mask=mask), eos_index)
        for i, block in enumerate(self.transformer.resblocks):
            x = put_block(x, replace(i, x[0, :1 + replace.n_block]) if i else None)
            x = block(x, attn_mask=mask)
        return self._read(x, eos_index)

    def encode(self, tokens: "ClassTokens", block: torch.Tensor, eos_index: torch.Tensor | None = None,
               replace: BlockHook | None = None) -> torch.Tensor:
        """Text features ``[C, embed_dim]`` of ``tokens`` with the learned ``block`` put in.

        Args:
            tokens: the class set's fixed embeddings; block: ``[k, d]`` (shared by all classes:
                its prefix is encoded once when :attr:`share_prefix`) or ``[C, k, d]``.
            eos_index: ``[C]`` positions to read (default ``tokens.eos_index``); may point
                into the prefix (``eos_index: reference``).
            replace: deep prompts (:data:`BlockHook`, a shared ``[k, d]`` block only).
        """
        eos_index = tokens.eos_index if eos_index is None else eos_index
        if block.dim() == 2 and self.share_prefix:
            n = tokens.n_shared
            prefix = torch.cat([tokens.prefix[0], block.to(tokens.prefix.dtype), tokens.suffix[0, :n]])
            return self.forward_shared(prefix, tokens.suffix[:, n:], eos_index, replace)
        return self(tokens.assemble(block), eos_index, replace)

    def encode_per_image(self, tokens: "ClassTokens", blocks: torch.Tensor,
                         eos_index: torch.Tensor | None = None) -> torch.Tensor:
        """Text features ``[B, C, embed_dim]``: every class of ``tokens`` with each of B learned
        blocks (an image-conditioned prompt, CoCoOp); ``blocks``: ``[B, k, d]``. With
        :attr:`share_prefix` each block's prefix is encoded once for its C classes."""
        eos_index = tokens.eos_index if eos_index is None else eos_index
        blocks = blocks.to(tokens.prefix.dtype)
        if self.share_prefix:
            n = tokens.n_shared
            sos, common = (t.expand(blocks.shape[0], -1, -1) for t in (tokens.prefix[0], tokens.suffix[0, :n]))
            return self.forward_shared(torch.cat([sos, blocks, common], dim=1), tokens.suffix[:, n:], eos_index)
        seqs = torch.cat([tokens.assemble(block) for block in blocks])
        return self(seqs, eos_index.repeat(blocks.shape[0])).unflatten(0, (blocks.shape[0], len(tokens)))

    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor, eos_index: torch.Tensor,
                       replace: BlockHook | None = None) -> torch.Tensor:
        """Encode ``C`` sequences ``prefix + suffix[c]`` running ``prefix`` once.

        Args:
            prefix: ``[P, d]`` embeddings common to every sequence (SOS and the shared block), or
                ``[G, P, d]``: G prefixes, each completed by every suffix.
            suffix: ``[C, S, d]`` the rest of each sequence, ``P + S <= context_length``.
            eos_index: ``[C]`` long, positions (in the whole sequence) to read.
            replace: deep prompts (:data:`BlockHook`) of the block ``prefix[1:1 + k]`` (one prefix).

        Returns:
            ``[C, embed_dim]`` (``[G, C, embed_dim]``) text features, equal to
            ``forward(cat(prefix, suffix), eos_index, replace)`` (of each prefix).
        """
        grouped = prefix.dim() == 3
        p = prefix if grouped else prefix.unsqueeze(0)
        (n_group, n_prefix), n_class = p.shape[:2], suffix.shape[0]
        length = n_prefix + suffix.shape[1]
        cast = self.transformer.get_cast_dtype()
        pos = self.positional_embedding[:length].to(cast)
        p = p.to(cast) + pos[:n_prefix]
        s = (suffix.to(cast) + pos[n_prefix:]).expand(n_group, -1, -1, -1).flatten(0, 1)  # [G*C, S, d]
        mask = self.attn_mask[:length, :length]
        for i, block in enumerate(self.transformer.resblocks):
            p = put_block(p, replace(i, p[0, :1 + replace.n_block]) if replace is not None and i else None)
            p, s = shared_prefix_block(block, p, s, mask)
        feats = self._read(torch.cat([per_sequence(p, n_class), s], dim=1), eos_index.repeat(n_group))
        return feats.unflatten(0, (n_group, n_class)) if grouped else feats

    def _read(self, x: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eos_index])
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


@torch.no_grad()
def encode_token_ids(encoder: TextEncoder, tokens: torch.Tensor, truncate: bool = True,
                     batch_size: int = 32, progress: str | None = None) -> torch.Tensor:
    """Text features ``[N, embed_dim]`` (not normalised) of tokenised texts, as CLIP's ``encode_text``.

    Args:
        tokens: ``[N, L]`` long, open_clip token ids (SOS ... EOS, zero padding; EOS is the
            largest id, so its position is the row's argmax).
        truncate: sort the texts by EOS position and cut each batch after its longest EOS: exact
            under the causal mask (module docstring), and a text of 20 tokens costs 20 positions,
            not 77.
        batch_size: texts per forward pass; small batches of similar lengths cost about the mean
            length, not the longest (Pets' CuPL sentences, 19 classes x 10: 4406 positions in
            batches of 32, 7030 in one batch, 14630 uncut).
        progress: label of a progress bar over the batches (tqdm, shown on a terminal); None: no bar.
    """
    from tqdm.auto import tqdm

    eos = tokens.argmax(dim=-1)
    order = eos.argsort() if truncate else torch.arange(len(tokens), device=tokens.device)
    out = None
    for idx in tqdm(order.split(batch_size), desc=progress, unit="batch", leave=False,
                    disable=None if progress else True):
        length = int(eos[idx].max()) + 1 if truncate else tokens.shape[1]
        feats = encoder(encoder.token_embedding(tokens[idx, :length]), eos[idx])
        out = feats.new_empty(len(tokens), feats.shape[1]) if out is None else out
        out[idx] = feats
    return out


def put_block(x: torch.Tensor, block: torch.Tensor | None) -> torch.Tensor:
    """``x [B, L, d]`` with positions ``1..k`` (after SOS) replaced by ``block [k, d]`` in every
    sequence (a :data:`BlockHook`'s deep prompt); ``x`` itself when ``block`` is None."""
    if block is None:
        return x
    return torch.cat([x[:, :1], block.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + block.shape[0]:]], dim=1)


def supports_prefix_sharing(clip: nn.Module) -> bool:
    """Whether :func:`shared_prefix_block` reproduces ``clip``'s text transformer: batch-first
    open_clip ``ResidualAttentionBlock`` layers (no cross-attention) with plain multi-head
    attention (packed in-projection, no bias_kv, no dropout), a causal mask, no checkpointing."""
    transformer, mask = clip.transformer, getattr(clip, "attn_mask", None)
    if mask is None or not transformer.batch_first or transformer.grad_checkpointing:
        return False
    causal = torch.full_like(mask, float("-inf")).triu(1)
    if not torch.equal(mask, causal):
        return False
    for block in transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv")
                or not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first
                or attn.in_proj_weight is None or attn.bias_k is not None or attn.add_zero_attn or attn.dropout):
            return False
    return True


def per_sequence(prefix: torch.Tensor, n: int) -> torch.Tensor:
    """``[G, ...]`` -> ``[G*n, ...]``, each prefix repeated for its n sequences (a view when G = 1)."""
    return prefix.unsqueeze(1).expand(-1, n, *prefix.shape[1:]).flatten(0, 1)


def shared_prefix_block(block: ResidualAttentionBlock, prefix: torch.Tensor, suffix: torch.Tensor,
                        mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip ``ResidualAttentionBlock`` on sequences sharing a prefix.

    The prefix's queries attend to the prefix (causal); each suffix's queries to its prefix's
    keys/values and its own (causal), exactly the rows of the full sequence (open_clip
    transformer.py: ``x + ls_1(attn(ln_1 x))``, then ``x + ls_2(mlp(ln_2 x))``).

    Args:
        prefix: ``[G, P, d]``; suffix: ``[G*C, S, d]``, rows ``g*C .. g*C+C-1`` completing prefix
            g; mask: ``[P+S, P+S]`` additive causal mask.

    Returns:
        ``(prefix, suffix)`` after the block, same shapes.
    """
    attn, n_prefix = block.attn, prefix.shape[1]
    n_class = suffix.shape[0] // prefix.shape[0]

    def qkv(x):
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        return [t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2) for t in (q, k, v)]  # [B, H, L, hd]

    def out(heads):
        return block.ls_1(attn.out_proj(heads.transpose(1, 2).flatten(2)))

    qp, kp, vp = qkv(prefix)
    qs, ks, vs = qkv(suffix)
    mask = mask.to(qp.dtype)
    attn_p = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:n_prefix, :n_prefix])
    keys = torch.cat([per_sequence(kp, n_class), ks], dim=2)
    values = torch.cat([per_sequence(vp, n_class), vs], dim=2)
    attn_s = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask[n_prefix:])
    prefix, suffix = prefix + out(attn_p), suffix + out(attn_s)
    return (prefix + block.ls_2(block.mlp(block.ln_2(prefix))),
            suffix + block.ls_2(block.mlp(block.ln_2(suffix))))


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
        n_block: k; n_shared: leading suffix positions with the same token in every class, before
        any EOS (``"of {}."``: 1), encoded with the shared prefix (:meth:`TextEncoder.encode`).
    """

    prefix: torch.Tensor
    suffix: torch.Tensor
    eos_index: torch.Tensor
    n_block: int
    n_shared: int = 0

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
        rest_ids = tokens[:, 1 + n_block:int(eos_index.min())]  # never EOS: every suffix keeps its own
        same = (rest_ids == rest_ids[:1]).all(dim=0).tolist() + [False]
        return cls(emb[:, :1], emb[:, 1 + n_block:], eos_index, n_block, same.index(False))

    def __len__(self) -> int:
        return self.prefix.shape[0]

    def select(self, idx: torch.Tensor) -> "ClassTokens":
        """The same pattern for the classes ``idx`` only."""
        return ClassTokens(self.prefix[idx], self.suffix[idx], self.eos_index[idx], self.n_block, self.n_shared)

    def assemble(self, block: torch.Tensor) -> torch.Tensor:
        """Insert the learned block. ``block``: ``[k, d]`` (shared) or ``[C, k, d]``; returns ``[C, L, d]``."""
        if block.dim() == 2:
            block = block.unsqueeze(0).expand(len(self), -1, -1)
        return torch.cat([self.prefix, block.to(self.prefix.dtype), self.suffix], dim=1)
