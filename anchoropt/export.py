"""Write a backbone as an OpenAI-format checkpoint (``anchoropt export openai``).

OpenAI's format is a flat state dict in OpenAI's key names (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight``, ``text_projection``...), the format CoOp-style code
reads with ``clip.build_model(state_dict)``, which infers the architecture from the shapes. The file
is written in fp32 (OpenAI's own files are fp16), so loading it back gives identical features.

Two things the weights cannot say, and OpenAI's builder assumes, are written beside the file in
``open_clip_config.json`` (the file Hugging Face open_clip downloads ship, read by
:func:`anchoropt.backbone.create_backbone`): the activation (OpenAI's builder always uses QuickGELU)
and the attention head width (OpenAI's builder assumes 64). Before anything is written, the file is
read back as OpenAI's builder reads it (:func:`openai_model`, with the model's head widths and
activation) and its features compared with the model's: a model with parts OpenAI's format cannot
express (layer scale, attention pooling, another text pooling...) is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from anchoropt.backbone import Backbone, BackboneError
from anchoropt.errors import ConfigError
from anchoropt.io import save_json, save_tensors

#: OpenAI's builder derives attention heads as width / 64 (clip/model.py build_model)
OPENAI_HEAD_WIDTH = 64
SIDECAR = "open_clip_config.json"


def head_widths(model: torch.nn.Module) -> tuple[int, int]:
    """Attention head width (channels per head) of the image and the text tower of an open_clip CLIP.

    Raises:
        BackboneError: the model is not an open_clip CLIP with OpenAI's towers."""
    try:
        text = model.transformer.resblocks[0].attn
        visual = model.visual.attnpool if hasattr(model.visual, "attnpool") else model.visual.transformer.resblocks[0].attn
    except AttributeError as err:
        raise BackboneError(f"{type(model).__name__} has no OpenAI-style towers ({err}): OpenAI's format cannot "
                            f"express it") from None
    vision_dim = visual.c_proj.in_features if hasattr(visual, "c_proj") else visual.embed_dim
    return vision_dim // visual.num_heads, text.embed_dim // text.num_heads


def openai_model(state: dict[str, torch.Tensor], vision_head_width: int = OPENAI_HEAD_WIDTH,
                 text_head_width: int = OPENAI_HEAD_WIDTH, quick_gelu: bool = True) -> open_clip.CLIP:
    """The model an OpenAI-format state dict describes, as OpenAI's ``clip.build_model`` infers it
    from the shapes (ViT or ModifiedResNet image tower, layers, widths, patch and image size,
    context length, vocabulary), with the head widths and activation OpenAI's builder fixes (64,
    QuickGELU) as arguments. Weights loaded strictly, fp32, eval mode.

    Raises:
        BackboneError: ``state`` is not in OpenAI's format (a key missing or unexpected), naming it."""
    try:
        if "visual.proj" in state:
            width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = CLIPVisionCfg(layers=_count(state, "visual.transformer.resblocks.", 3), width=width,
                                   patch_size=patch, image_size=patch * grid, head_width=vision_head_width)
        else:
            layers = tuple(_count(state, f"visual.layer{b}.", 2) for b in (1, 2, 3, 4))
            out = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = CLIPVisionCfg(layers=layers, width=state["visual.layer1.0.conv1.weight"].shape[0],
                                   image_size=out * 32, head_width=vision_head_width)
        text_width = state["ln_final.weight"].shape[0]
        text = CLIPTextCfg(context_length=state["positional_embedding"].shape[0],
                           vocab_size=state["token_embedding.weight"].shape[0], width=text_width,
                           heads=text_width // text_head_width, layers=_count(state, "transformer.resblocks.", 2))
        model = open_clip.CLIP(state["text_projection"].shape[1], vision, text, quick_gelu=quick_gelu)
    except KeyError as err:
        raise BackboneError(f"not an OpenAI-format state dict: no {err.args[0]}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BackboneError(f"not an OpenAI-format state dict: {' '.join(str(err).split())[:300]}") from None
    return model.float().eval().requires_grad_(False)


def _count(state: dict, prefix: str, index: int) -> int:
    """How many distinct ``prefix<i>.`` blocks ``state`` holds (``index``: the dot-position of i)."""
    return len({k.split(".")[index] for k in state if k.startswith(prefix)})


def export_openai(backbone: Backbone, out: str | Path, overwrite: bool = False) -> dict:
    """Write ``backbone``'s weights to ``out`` in OpenAI's format (fp32) and its activation, model
    config and image preprocessing to ``open_clip_config.json`` beside it.

    Returns:
        ``{"path", "config", "tensors", "activation", "vision_head_width", "text_head_width",
        "max_abs_diff"}``: what was written and the largest feature difference (image and text
        features, random inputs) between ``backbone`` and the file read as OpenAI's builder reads it.

    Raises:
        BackboneError: the model has parts OpenAI's format cannot express (features differ, or its
            state dict is not OpenAI's keys).
        ConfigError: ``out``, or a different ``open_clip_config.json`` beside it, exists and not
            ``overwrite``.
    """
    out = Path(out).expanduser()
    sidecar = out.parent / SIDECAR
    config = {"model_cfg": {**open_clip.get_model_config(backbone.name), "quick_gelu": backbone.quick_gelu},
              "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.preprocess_cfg.items()}}
    if not overwrite:
        if out.exists():
            raise ConfigError(f"{out} exists: pass --overwrite to replace it")
        if sidecar.is_file() and json.loads(sidecar.read_text() or "{}") != config:
            raise ConfigError(f"{sidecar} describes another checkpoint: export into another folder, or pass "
                                  f"--overwrite")
    state = {k: v.detach().float().cpu().clone() for k, v in backbone.model.state_dict().items()}
    vision_hw, text_hw = head_widths(backbone.model)
    diff = _feature_difference(backbone, openai_model(state, vision_hw, text_hw, backbone.quick_gelu))
    if not diff <= 1e-5:
        raise BackboneError(f"{backbone.name} has parts OpenAI's format cannot express: read back as OpenAI's "
                            f"builder reads it, its features differ by {diff:.3g}")
    save_tensors(state, out)
    save_json(config, sidecar)
    return {"path": str(out), "config": str(sidecar), "tensors": len(state), "activation": backbone.activation,
            "vision_head_width": vision_hw, "text_head_width": text_hw, "max_abs_diff": diff}


@torch.no_grad()
def _feature_difference(backbone: Backbone, other: torch.nn.Module) -> float:
    """Largest absolute difference of image and text features of two models on fixed random inputs."""
    model = backbone.model
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=gen)
    text = backbone.tokenizer(["a photo of a red circle.", "a striped square on a blue background."])
    other = other.to(device)
    return max((model.encode_image(images.to(device)) - other.encode_image(images.to(device))).abs().max().item(),
               (model.encode_text(text.to(device)) - other.encode_text(text.to(device))).abs().max().item())
