"""MaPLe (Khattak et al., CVPR 2023), MaPLe+ATPrompt and MaPLe+AnchorOPT, AnchorOPT's deep variant
(SPEC section 6).

Reference (github.com/zhengli97/ATPrompt): ``trainers/maple.py``, ``trainers/maple_atp.py``,
``trainers/maple_anchoropt.py``, ``clip/model.py`` (``ResidualAttentionBlock_MaPLe``,
``VisionTransformer_MaPLe``), ``clip/model_atp.py`` and ``clip/model_anchoropt.py``.

- Text: the learned block sits after SOS in the input (layer 1); before each text layer
  ``j = 2..J`` (``J = prompt_depth``) the block positions' hidden states are replaced (MaPLe: by
  fresh learned tokens; the deep AnchorOPT: by ``W @ [fresh soft tokens; carried anchors]``).
- Vision: the prompt of layer ``j`` is a Linear map ``d_t -> d_v`` (one per layer) of that layer's
  text soft tokens, appended after the ViT's class and patch tokens: layer 1 after the positional
  embedding and through ``ln_pre``, deeper layers replacing the previous layer's prompt outputs.
  The image feature is read at the class token, as CLIP's.

The image tower is prompted, so these methods train and score on pixels
(:meth:`Trainer.pixel_batches`, :meth:`Trainer.eval_images`), batched, under the engine's fp16
autocast on GPU. The forward runs open_clip's own modules (``VisionTransformer._embeds`` /
``_pool``, the ``ResidualAttentionBlock`` layers), unmodified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from anchoropt.backbone import Backbone
from anchoropt.config import ConfigError
from anchoropt.engine import EpochCallback, Stepper, Trainer, stream_generator
from anchoropt.errors import brief
from anchoropt.methods.anchoropt import AnchorOPT
from anchoropt.methods.atprompt import AttributeTokens
from anchoropt.methods.base import Method
from anchoropt.prompts import clip_logits, gumbel_hard, normal_init, phrase_init
from anchoropt.task import EvalSet

REFERENCE_TEST_BATCH = {"base2novel": 200, "cross_dataset": 100}  # MaPLe configs' TEST.BATCH_SIZE


def check_towers(backbone: Backbone, depth: int) -> None:
    """MaPLe needs an open_clip ViT image tower read at its class token, and ``depth`` layers in
    both towers.

    Raises:
        ConfigError: one line naming the backbone and what it lacks.
    """
    visual, name = backbone.model.visual, backbone.name
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"MaPLe prompts a ViT image tower, but backbone {name} has a {type(visual).__name__}: "
                          f"use a ViT backbone (e.g. ViT-B-16, ToyCLIP-ViT)")
    if visual.attn_pool is not None or visual.pool_type != "tok" or not visual.transformer.batch_first:
        raise ConfigError(f"MaPLe reads the class token of a batch-first ViT; backbone {name}'s image tower pools "
                          f"with {brief(visual.pool_type)}{' and an attention pooler' if visual.attn_pool else ''}")
    for tower, transformer in (("text", backbone.model.transformer), ("image", visual.transformer)):
        if depth > len(transformer.resblocks):
            raise ConfigError(f"prompt_depth={depth} exceeds the {len(transformer.resblocks)} layers of backbone "
                              f"{name}'s {tower} tower")


def linear_init(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear(n_in, n_out)`` with its default init (weight and bias ``U(-1/sqrt(n_in), 1/sqrt(n_in))``,
    torch's kaiming_uniform with ``a = sqrt(5)``), drawn from ``generator`` instead of the global RNG."""
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    bound = n_in ** -0.5
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
    return layer


class DeepPrompts(nn.Module):
    """MaPLe's prompts beyond the input: text soft tokens of layers 2..J and the text -> vision couplings.

    Attributes:
        deep: ``[J-1, M, d_t]``, N(0, 0.02) (reference ``compound_prompts_text``).
        couplings: J ``Linear(d_t, d_v)``: ``[0]`` maps the input soft tokens (reference ``proj``),
            ``[1:]`` the deep ones (reference ``compound_prompt_projections``, copies of one Linear,
            so they start equal).
    """

    def __init__(self, depth: int, n_ctx: int, text_width: int, vision_width: int, generator: torch.Generator):
        super().__init__()
        # an explicit width: J = 1 (shallow MaPLe) has no deep tokens, and view(0, M, -1) is ambiguous
        self.deep = nn.Parameter(normal_init((depth - 1) * n_ctx, text_width, generator).view(depth - 1, n_ctx,
                                                                                               text_width))
        first, shared = (linear_init(text_width, vision_width, generator) for _ in range(2))
        self.couplings = nn.ModuleList([first] + [copy.deepcopy(shared) for _ in range(depth - 1)])

    def vision(self, ctx: torch.Tensor) -> list[torch.Tensor]:
        """The J vision prompts ``[M, d_v]`` for input soft tokens ``ctx [M, d_t]``."""
        return [self.couplings[0](ctx)] + [c(p) for c, p in zip(self.couplings[1:], self.deep)]


def prompted_image_features(visual: VisionTransformer, images: torch.Tensor,
                             prompts: list[torch.Tensor]) -> torch.Tensor:
    """Image features ``[B, D]`` of ``images [B, 3, H, W]`` (normalised model input) with the J
    vision prompts ``[M, d_v]`` (reference ``VisionTransformer_MaPLe`` and the vision branch of
    ``ResidualAttentionBlock_MaPLe``)."""
    n, m = images.shape[0], prompts[0].shape[0]
    x = visual._embeds(images)  # class + patch tokens + positional embedding, ln_pre: [B, 1 + G, d_v]
    x = torch.cat([x, visual.ln_pre(prompts[0]).to(x.dtype).expand(n, -1, -1)], dim=1)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :-m], prompts[i].to(x.dtype).expand(n, -1, -1)], dim=1)
        x = block(x)
    return visual._pool(x)[0] @ visual.proj


@dataclass
class FreshTokens:
    """MaPLe's text hook (:class:`anchoropt.text.BlockHook`): before layer ``i`` (1 <= i < J, 0-based)
    the block's last M positions (the soft tokens) get ``deep[i - 1]``; positions before them
    (ATPrompt's attribute part) carry their hidden states; deeper layers keep the whole block."""

    deep: torch.Tensor  # [J-1, M, d_t]
    n_block: int  # k >= M: the block's length

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if layer > self.deep.shape[0]:
            return None
        carried = hidden[1:1 + self.n_block - self.deep.shape[1]]
        return torch.cat([carried, self.deep[layer - 1].to(hidden.dtype)])


@dataclass
class CarriedAnchors:
    """The deep AnchorOPT's text hook (SPEC section 6, reference ``clip/model_anchoropt.py``): layer
    ``i`` (1 <= i < J) gets ``W @ [deep[i - 1]; carried anchors]`` with the same ``W [M+N, M+N]`` as
    the input block. Anchor ``a`` is carried from the first block position whose row of ``W`` picks
    it (the output of layer ``i - 1`` there; gradients flow through it); an anchor no row picks
    carries zeros (its column adds nothing, as the reference's ``W[..., :-1]`` branch).
    ``offset`` 1 reads the anchor's own position; 0 the one before it (``carry_index: reference``:
    the reference indexes the block position into the whole sequence, SOS included)."""

    deep: torch.Tensor  # [J-1, M, d_t]
    position: torch.Tensor  # W [M+N, M+N], rows one-hot
    offset: int = 1

    @property
    def n_block(self) -> int:
        return self.position.shape[0]

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if layer > self.deep.shape[0]:
            return None
        n_ctx = self.deep.shape[1]
        hits = F.one_hot(self.position.detach().argmax(dim=-1), self.n_block)[:, n_ctx:]  # [M+N, N]
        first = hits.argmax(dim=0)  # the first row picking each anchor (torch.argmax: first maximum)
        carried = hidden[self.offset + first] * hits.any(dim=0, keepdim=True).T.to(hidden.dtype)
        return self.position.to(hidden.dtype) @ torch.cat([self.deep[layer - 1].to(hidden.dtype), carried])


def maple_ctx_init(trainer: Trainer) -> tuple[torch.Tensor, str]:
    """MaPLe's input soft tokens ``[M, d_t]`` and the prompt text after them (reference ``maple.py``):
    with ``ctx_init`` of at least ``n_ctx`` tokens, its first ``n_ctx`` token embeddings, its other
    tokens staying fixed words before the class name (``a photo`` + ``of a {}.`` for ``n_ctx=2``);
    else N(0, 0.02) from the ``soft_tokens`` stream and ``{}.``.

    Raises:
        ConfigError: the phrase's remaining tokens do not re-tokenise to themselves.
    """
    cfg, tokenizer = trainer.cfg, trainer.backbone.tokenizer
    ids = tokenizer.encode(cfg.ctx_init) if cfg.ctx_init else []
    if not ids or cfg.n_ctx > len(ids):  # reference: random when n_ctx exceeds the phrase
        return normal_init(cfg.n_ctx, trainer.width, stream_generator(cfg.seed, "soft_tokens")), "{}."
    rest = tokenizer.decode(ids[cfg.n_ctx:]).strip()
    if tokenizer.encode(rest) != ids[cfg.n_ctx:]:
        raise ConfigError(f"ctx_init={brief(cfg.ctx_init)}: its tokens after the first n_ctx={cfg.n_ctx} do not "
                          f"re-tokenise as written ({brief(rest)})")
    init = phrase_init(cfg.ctx_init, tokenizer, trainer.backbone.model.token_embedding)[:cfg.n_ctx]
    return init, f"{rest} {{}}.".strip()


def vision_width(backbone: Backbone) -> int:
    return backbone.model.visual.class_embedding.shape[0]


class MaPLePrompt(nn.Module):
    """MaPLe's learned tensors: input soft tokens ``ctx [M, d_t]`` and :class:`DeepPrompts`."""

    def __init__(self, init: torch.Tensor, depth: int, vision_width: int, generator: torch.Generator):
        super().__init__()
        self.ctx = nn.Parameter(init.clone())
        self.deep = DeepPrompts(depth, init.shape[0], init.shape[1], vision_width, generator)


class MaPLe(Method):
    """MaPLe: deep text prompts in layers 1..J coupled to vision prompts, trained with CE on pixels."""

    name = "maple"
    phrase_sets_n_ctx = False  # the reference learns ctx_init's first n_ctx tokens

    @classmethod
    def check(cls, cfg, backbone: Backbone) -> None:
        check_towers(backbone, cfg.prompt_depth)

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        self.check(self.cfg, trainer.backbone)
        init, self.rest = maple_ctx_init(trainer)
        self.prompt = MaPLePrompt(init, self.cfg.prompt_depth, vision_width(trainer.backbone),
                                  stream_generator(self.cfg.seed, "deep_prompts")).to(trainer.device)
        self.stepper = Stepper.sgd([p for m in self.modules() for p in m.parameters()], self.cfg.lr, self.cfg)

    def modules(self) -> list[nn.Module]:
        return [self.prompt]

    def batches(self, epoch: int):
        return self.trainer.pixel_batches(epoch)

    def block(self, dataset: str) -> torch.Tensor:
        """The input block ``[k, d_t]`` after SOS (MaPLe: the soft tokens)."""
        return self.prompt.ctx

    def text(self, classnames: list[str], dataset: str | None = None) -> torch.Tensor:
        """Text features ``[C, D]`` of the deep-prompted class prompts of ``dataset`` (default the
        training one)."""
        t = self.trainer
        block = self.block(dataset or t.task.dataset)
        tokens = t.tokens(classnames, block.shape[0], self.rest)
        return t.encoder.encode(tokens, block, replace=FreshTokens(self.prompt.deep.deep, block.shape[0])).float()

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``[B, D]`` of model input ``[B, 3, H, W]``."""
        prompts = self.prompt.deep.vision(self.prompt.ctx)
        return prompted_image_features(self.trainer.backbone.model.visual, images, prompts).float()

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        pixels, _, labels = batch
        t = self.trainer
        logits = clip_logits(self.image(t.model_input(pixels)), self.text(t.task.classnames), t.logit_scale)
        return F.cross_entropy(logits, labels), self.stepper

    def fit(self, on_epoch: EpochCallback | None = None) -> None:
        self.train()
        self.trainer.run_loop("maple", self.cfg.epochs,
                              lambda epoch: [lambda b=b: self.prompt_step(b) for b in self.batches(epoch)],
                              [self.stepper], on_epoch)
        self.eval()

    def scores(self, ev: EvalSet) -> dict[str, torch.Tensor]:
        t = self.trainer
        text = self.text(ev.classnames, ev.dataset)
        logits = [clip_logits(self.image(images), text, t.logit_scale)
                  for images in t.eval_images(ev, REFERENCE_TEST_BATCH[self.cfg.protocol])]
        return {"acc": torch.cat(logits)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()}

    def updates(self) -> dict[str, int]:
        return {"prompt": self.stepper.updates}


class MaPLeATP(MaPLe):
    """MaPLe+ATPrompt (reference ``trainers/maple_atp.py``, ``clip/model_atp.py``): the input block
    ``[a_1] w_1 ... [a_A] w_A [V]`` (:class:`~anchoropt.methods.atprompt.AttributeTokens`); before
    text layers 2..J only the soft tokens ``V`` are replaced, the attribute part's hidden states
    carried; vision prompts coupled to ``V`` as MaPLe's. The reference starts ``V`` at random
    (``if False``): leave ``ctx_init`` empty for it."""

    name = "maple_atp"

    def __init__(self, trainer: Trainer):
        self.attributes = AttributeTokens.build(trainer)  # before MaPLe's stepper, which takes modules()
        super().__init__(trainer)

    def modules(self) -> list[nn.Module]:
        return [self.prompt, self.attributes]

    def block(self, dataset: str) -> torch.Tensor:
        return self.attributes(self.prompt.ctx, dataset)

    def tensors(self) -> dict[str, torch.Tensor]:
        """MaPLe's tensors and the attribute soft tokens ``att [S, n_att, d_t]``."""
        return {**super().tensors(), "att": torch.stack(list(self.attributes.att)).detach().cpu()}

    def put_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        super().put_tensors(saved)
        self.attributes.put(saved["att"])


class MaPLeAnchorOPT(AnchorOPT):
    """MaPLe+AnchorOPT (reference ``trainers/maple_anchoropt.py``): the input block
    ``W @ [soft tokens; anchors]`` of CoOp+AnchorOPT's prompt, before each text layer 2..J ``W @
    [fresh soft tokens; carried anchors]`` (:class:`CarriedAnchors`, the same ``W`` at every layer),
    vision prompts coupled to the soft tokens as MaPLe's. Loss CE + KD; the anchor teacher and the
    novel ensemble score the frozen image tower's features of the same images (the reference's
    ``image_encoder_vanilla``)."""

    name = "maple_anchoropt"

    @classmethod
    def check(cls, cfg, backbone: Backbone) -> None:
        check_towers(backbone, cfg.prompt_depth)

    def __init__(self, trainer: Trainer):
        super().__init__(trainer)
        cfg = self.cfg
        self.check(cfg, trainer.backbone)
        ctx = self.prompt.ctx
        self.deep = DeepPrompts(cfg.prompt_depth, ctx.shape[0], ctx.shape[1], vision_width(trainer.backbone),
                                stream_generator(cfg.seed, "deep_prompts")).to(trainer.device)
        self.prompt_stepper.optimizer.add_param_group({"params": list(self.deep.parameters())})

    def modules(self) -> list[nn.Module]:
        return [self.prompt, self.deep, self.anchor]

    def batches(self, epoch: int):
        return self.trainer.pixel_batches(epoch)

    def text(self, classnames: list[str], position: torch.Tensor | None = None) -> torch.Tensor:
        """Text features ``[C, D]``; ``position``: a given ``W`` (else the fixed one or a draw)."""
        t, p = self.trainer, self.prompt
        position = self.fixed_position if position is None else position
        position = p.position_matrix() if position is None else position
        tokens = t.tokens(classnames, p.n_block, p.rest)
        block = position @ torch.cat([p.ctx, self.anchor.anchors.detach()])
        hook = CarriedAnchors(self.deep.deep, position, 1 if self.cfg.carry_index == "correct" else 0)
        return t.encoder.encode(tokens, block, tokens.eos_index - p.eos_shift, replace=hook).float()

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features ``[B, D]`` (vision prompts from the soft tokens only, as the reference)."""
        visual = self.trainer.backbone.model.visual
        return prompted_image_features(visual, images, self.deep.vision(self.prompt.ctx)).float()

    def prompt_step(self, batch) -> tuple[torch.Tensor, Stepper]:
        """One Stage II step: CE + KD, the teacher scoring the frozen features of the same views."""
        pixels, feats, labels = batch
        t = self.trainer
        logits = clip_logits(self.image(t.model_input(pixels)), self.text(t.task.classnames), t.logit_scale)
        return self.stage2_loss(logits, feats, labels), self.prompt_stepper

    def prompt_scores(self, ev: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Under ``position_eval: sample`` each test batch (the MaPLe configs' size) gets its own W
        sample from a stream seeded per evaluation."""
        t = self.trainer
        sample = self.prompt.position_eval == "sample" and self.fixed_position is None
        gen = stream_generator(self.cfg.seed, "eval_positions")
        text = None if sample else self.text(ev.classnames)
        logits = []
        for images in t.eval_images(ev, REFERENCE_TEST_BATCH[self.cfg.protocol]):
            if sample:
                text = self.text(ev.classnames, gumbel_hard(self.prompt.position, self.prompt.gumbel_tau, gen))
            logits.append(clip_logits(self.image(images), text, t.logit_scale))
        return torch.cat(logits), ev.features.to(t.device)
