"""Frozen CLIP backbones built through open_clip.

One entry point, :func:`create_backbone`, builds any open_clip model by name
(``ViT-B-16``, ``ViT-B-32``, ``RN50``, the project's ``ToyCLIP``...) with
``pretrained`` being

- an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), fetched by open_clip;
- a local OpenAI ``.pt`` file as CoOp users download it (TorchScript archive or
  plain state dict);
- a local open_clip checkpoint (state dict, optionally under ``state_dict``);
- ``toy``: the small CLIPs shipped with this package (``ToyCLIP``: ResNet image tower;
  ``ToyCLIP-ViT``: ViT image tower, for methods that prompt it), see :data:`TOY_CHECKPOINTS`;
- empty / ``none``: random initialisation (tests, performance benchmarks).

OpenAI weights (and LAION-400M's ViT-B-32, MetaCLIP's, DFN's...) were trained with QuickGELU;
open_clip's built-in configs use GELU. Features differ by about 0.03 when the wrong one is used,
so :func:`decide_quick_gelu` decides it for every form of weights (tag, OpenAI file, plain state
dict, open_clip training checkpoint, Hugging Face download) and warns where the weights cannot tell.

Image preprocessing (normalisation mean/std, resize interpolation and mode) is that of the
weights' open_clip pretrained config (``open_clip.get_pretrained_cfg``), which differs between
weights (SigLIP and LAION-2B ViT-L-14: Inception mean/std; CLIPA: ImageNet's, bilinear, squash);
see :func:`resolve_preprocess` for how a local checkpoint's is found, named or guessed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
import open_clip
import torch
import torchvision.transforms as T

from anchoropt.errors import brief

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: model name -> its shipped toy-world checkpoint (``pretrained: toy``), see anchoropt/assets/README.md
TOY_CHECKPOINTS = {"ToyCLIP": Path(__file__).parent / "assets" / "toyclip.pt",
                   "ToyCLIP-ViT": Path(__file__).parent / "assets" / "toyclip_vit.pt"}
open_clip.add_model_config(MODEL_CONFIG_DIR)
# Extra model-config folders (os.pathsep-separated), e.g. the tests' tiny models, in every process.
for _extra in filter(None, os.environ.get("ANCHOROPT_MODEL_CONFIGS", "").split(os.pathsep)):
    open_clip.add_model_config(_extra)


class BackboneError(RuntimeError):
    """A backbone that cannot be built: unknown name, missing or unreadable checkpoint."""


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and test-time image transform.

    Attributes:
        model: ``open_clip.CLIP`` in eval mode, all parameters ``requires_grad=False``.
        tokenizer: callable ``list[str] -> LongTensor [B, 77]`` (open_clip BPE tokenizer).
        preprocess: PIL image -> float tensor ``[3, H, W]`` (resize + centre crop + normalise).
        mean, std: per-channel normalisation of the weights (RGB, 0-1 scale).
        preprocess_cfg: ``mean``, ``std``, ``interpolation``, ``resize_mode`` of ``preprocess``
            (open_clip's names), part of feature cache keys.
        name: open_clip model name; pretrained: what the weights came from.
        weights_id: what the weights are, for cache keys: the tag, ``random``, or a checkpoint
            file's resolved path, size and modification time (a file replaced in place changes it).
        quick_gelu: whether the model's MLPs use QuickGELU (else GELU); part of cache keys.
        activation_from: what decided it (:func:`decide_quick_gelu`), for the record.
    """

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    pretrained: str
    weights_id: str
    preprocess_cfg: dict
    quick_gelu: bool
    activation_from: str

    @property
    def activation(self) -> str:
        """``quick_gelu`` or ``gelu``: the activation the model runs with (records, cache keys)."""
        return "quick_gelu" if self.quick_gelu else "gelu"

    def augment(self, crop_scale: float = 0.08, flip: bool = True) -> Callable:
        """Training augmentation of CoOp/Dassl: PIL image -> ``[3, H, W]``: random resized crop
        (area fraction ``crop_scale``..1), horizontal flip if ``flip``, normalise.
        Draws from torch's global RNG (torchvision transforms)."""
        interpolation = T.InterpolationMode(self.preprocess_cfg["interpolation"])
        steps = [T.RandomResizedCrop(self.image_size, scale=(crop_scale, 1.0), interpolation=interpolation)]
        if flip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def create_backbone(name: str, pretrained: str = "openai", quick_gelu: bool | None = None,
                    device: str | torch.device = "cpu", preprocess: str = "") -> Backbone:
    """Build a frozen open_clip model by name.

    Args:
        name: open_clip model name (see ``open_clip.list_models()``).
        pretrained: tag, checkpoint path, ``toy``, or ``""``/``none`` for random init.
        quick_gelu: force QuickGELU on/off; ``None`` decides from the weights
            (:func:`decide_quick_gelu`; a warning where they cannot tell).
        device: where the model lives.
        preprocess: pretrained tag of ``name`` whose image preprocessing to use (see
            :func:`resolve_preprocess`); empty: the weights'.

    Raises:
        BackboneError: unknown model name, missing/unreadable checkpoint, a tag
            that cannot be fetched (offline), or an unknown ``preprocess`` tag; the message
            names the path or tag and what to pass instead.
    """
    if name not in open_clip.list_models():
        raise BackboneError(f"unknown model '{name}'; open_clip knows e.g. ViT-B-16, ViT-B-32, RN50, ToyCLIP")
    source = _resolve_pretrained(name, pretrained)
    checkpoint = _fetch_checkpoint(name, source) if source is not None else None
    state = checkpoint.state if checkpoint is not None else None
    openai_weights = checkpoint is not None and checkpoint.openai_format
    use_quick_gelu, activation_from, unsure = decide_quick_gelu(name, source, quick_gelu, checkpoint)
    if unsure:
        warnings.warn(unsure, UserWarning, stacklevel=2)
    try:
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
            torch.manual_seed(0)  # random-init backbones (tests, benchmarks) are the same in every process
            # a model keyword sets the activation both ways (force_quick_gelu only turns it on)
            model = open_clip.create_model(name, pretrained=None, quick_gelu=use_quick_gelu)
    except Exception as err:  # open_clip raises bare RuntimeErrors
        raise BackboneError(f"cannot build '{name}': {err}") from err
    if state is not None:
        try:
            model.load_state_dict(open_clip.factory.convert_state_dict(model, state), strict=True)
        except RuntimeError as err:
            raise BackboneError(f"checkpoint '{pretrained}' does not fit model {name}: "
                                f"{str(err).splitlines()[0]}") from err
    model = model.to(device).eval().requires_grad_(False)
    cfg, guessed = resolve_preprocess(name, source, preprocess, openai_weights)
    if guessed:
        warnings.warn(guessed, UserWarning, stacklevel=2)
    transform = open_clip.image_transform(model.visual.image_size, is_train=False, **cfg)
    return Backbone(model=model, tokenizer=open_clip.get_tokenizer(name), preprocess=transform,
                    mean=cfg["mean"], std=cfg["std"], name=name, pretrained=pretrained or "none",
                    weights_id=_weights_id(source), preprocess_cfg=cfg, quick_gelu=use_quick_gelu,
                    activation_from=activation_from)


def _weights_id(source: str | Path | None) -> str:
    if source is None:
        return "random"
    if isinstance(source, Path):
        stat = source.stat()
        return f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return source


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns "No pretrained weights loaded" because the weights are loaded after creation."""
    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _resolve_pretrained(name: str, pretrained: str | None) -> str | Path | None:
    """Return None (random init), a Path (local file) or a tag string."""
    if not pretrained or pretrained.lower() == "none":
        return None
    if pretrained == "toy":
        if name not in TOY_CHECKPOINTS:
            raise BackboneError(f"pretrained=toy exists only for {' and '.join(TOY_CHECKPOINTS)}, not {name}")
        if not TOY_CHECKPOINTS[name].is_file():
            raise BackboneError(f"the toy checkpoint {TOY_CHECKPOINTS[name]} is missing; reinstall anchoropt")
        return TOY_CHECKPOINTS[name]
    if open_clip.get_pretrained_cfg(name, pretrained):
        return pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.suffix or "/" in pretrained:
        raise BackboneError(f"checkpoint file not found: {path}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise BackboneError(f"'{pretrained}' is neither a pretrained tag of {name} ({', '.join(tags) or 'none'}) "
                        f"nor a checkpoint file")


@dataclass
class Checkpoint:
    """The weights of a checkpoint and what the file says about how they were trained.

    Attributes:
        state: fp32 state dict (``module.`` prefixes and OpenAI's extra entries removed).
        openai_format: an OpenAI TorchScript archive, or a state dict with OpenAI's extra entries
            ``input_resolution``, ``context_length``, ``vocab_size`` (taken from such an archive).
        trained_as: the open_clip model an open_clip training checkpoint was trained as (its run's
            ``params.txt`` ``model:`` line, else the ``model_<name>`` part of its run name); empty if unknown.
    """

    state: dict[str, torch.Tensor]
    openai_format: bool = False
    trained_as: str = ""


def _fetch_checkpoint(name: str, source: str | Path) -> Checkpoint:
    """Read a local checkpoint, or download a tag's (BackboneError offline)."""
    if isinstance(source, str):
        tag_cfg = open_clip.get_pretrained_cfg(name, source)
        try:
            path = Path(open_clip.download_pretrained(tag_cfg))
        except Exception as err:
            raise BackboneError(f"cannot fetch pretrained tag '{source}' for {name} (offline?): pass a local "
                                f"checkpoint path instead, e.g. pretrained=/path/to/{name}.pt") from err
        return _read_checkpoint(path)
    return _read_checkpoint(source)


def _read_checkpoint(path: Path) -> Checkpoint:
    """Read a TorchScript archive or a (possibly wrapped) state dict, with its format's evidence.

    OpenAI's released files are TorchScript archives whose state dict carries the
    extra entries ``input_resolution``, ``context_length``, ``vocab_size``. open_clip's training
    script saves ``{"epoch", "name", "state_dict", "optimizer"...}`` under ``<logs>/<name>/checkpoints/``
    and the run's arguments in ``<logs>/<name>/params.txt``.
    """
    try:
        if _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(f"cannot read checkpoint {path}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from err
    trained_as = ""
    if isinstance(state, dict) and "state_dict" in state:
        trained_as = _trained_as(path, state.get("name"))
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    openai = "input_resolution" in state
    state = {k.removeprefix("module."): v.float() for k, v in state.items()
             if k not in ("input_resolution", "context_length", "vocab_size")}
    return Checkpoint(state, openai_format=openai, trained_as=trained_as)


def _trained_as(path: Path, run_name: object) -> str:
    """The open_clip model of a training checkpoint: its run's ``params.txt``, else its run name."""
    for params in (path.parent.parent / "params.txt", path.parent / "params.txt"):
        if params.is_file():
            found = re.search(r"^model: (\S+)$", params.read_text(errors="replace"), re.MULTILINE)
            if found:
                return found.group(1)
    if isinstance(run_name, str):  # open_clip's default run name: <date>-model_<name>-lr_...
        known = [m for m in open_clip.list_models() if f"-model_{m}-" in f"-{run_name}-"]
        if known:
            return max(known, key=len)
    return ""


def decide_quick_gelu(name: str, source: str | Path | None, quick_gelu: bool | None = None,
                      checkpoint: Checkpoint | None = None) -> tuple[bool, str, str | None]:
    """Whether model ``name`` with weights ``source`` runs QuickGELU, what decided it, and a warning
    where the weights cannot tell.

    In order: ``quick_gelu`` when given; a tag's open_clip pretrained config (``openai``,
    ``laion400m_e32`` of ViT-B-32, ``metaclip_*``, ``dfn2b``: QuickGELU); OpenAI's format (TorchScript
    archive or its extra entries): QuickGELU; an open_clip training checkpoint: the config of the
    model it was trained as (``ViT-B-32-quickgelu``: QuickGELU); an ``open_clip_config.json`` beside
    the file (Hugging Face downloads, ``anchoropt export openai``): its ``model_cfg``; the toy
    checkpoints, random weights and model names that say QuickGELU (``*-quickgelu``): the model
    config. A plain state dict fits ``name`` exactly (keys and shapes), so the published weights of
    that architecture (the tags of ``name`` and ``name-quickgelu``) are what it can be: if they all
    use one activation, that one (RN50: all QuickGELU); if they differ (ViT-B-16: OpenAI's QuickGELU,
    LAION-2B's GELU), the model config's (GELU) with a warning naming ``quick_gelu=true``.

    Returns:
        (quick_gelu, what decided it, warning or None).

    Raises:
        BackboneError: the ``open_clip_config.json`` beside the file is malformed.
    """
    config = _config_quick_gelu(name)
    if quick_gelu is not None:
        return quick_gelu, f"quick_gelu={str(quick_gelu).lower()} given", None
    if source is None:
        return config, "random weights: the model config", None
    if isinstance(source, str):
        return bool(open_clip.get_pretrained_cfg(name, source).get("quick_gelu", False)), \
            f"open_clip's pretrained config of tag {source}", None
    if checkpoint is not None and checkpoint.openai_format:
        return True, "OpenAI's format (TorchScript archive or its input_resolution entries)", None
    if checkpoint is not None and checkpoint.trained_as in open_clip.list_models():
        return _config_quick_gelu(checkpoint.trained_as), f"training checkpoint of {checkpoint.trained_as}", None
    shipped = _shipped_config(source).get("model_cfg")
    if isinstance(shipped, dict):
        return bool(shipped.get("quick_gelu", False)), f"model_cfg of {source.parent / 'open_clip_config.json'}", None
    if config or source in TOY_CHECKPOINTS.values():
        return config, f"the config of {name}", None
    published = _published_quick_gelu(name)
    if len(set(published.values())) == 1:
        value = next(iter(published.values()))
        return value, f"every published {name} weights ({', '.join(published)}) use it", None
    if not published:
        return config, f"the config of {name} (no published weights of this architecture)", None
    quick = ", ".join(t for t, v in published.items() if v)
    return config, f"the config of {name} (weights ambiguous)", (
        f"cannot tell from {source} whether its {name} weights use QuickGELU (as {quick}) or GELU (the "
        f"others); using {'QuickGELU' if config else 'GELU'}: pass quick_gelu=true for OpenAI's weights "
        f"(quick_gelu=false if they are GELU's) to decide and silence this")


def _config_quick_gelu(name: str) -> bool:
    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def _published_quick_gelu(name: str) -> dict[str, bool]:
    """``quick_gelu`` of every pretrained tag of the architecture ``name`` (also listed under
    ``name-quickgelu`` or ``name`` without it: the same keys and shapes)."""
    base = name.removesuffix("-quickgelu")
    out = {}
    for model in (base, f"{base}-quickgelu"):
        if model in open_clip.list_models():
            for tag in open_clip.list_pretrained_tags_by_model(model):
                out.setdefault(tag, bool(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False)))
    return out


def _shipped_config(source: Path) -> dict:
    """The ``open_clip_config.json`` beside a checkpoint file, ``{}`` if none.

    Raises:
        BackboneError: it is not a JSON object."""
    shipped = source.parent / "open_clip_config.json"
    if not shipped.is_file():
        return {}
    try:
        found = json.loads(shipped.read_text())
    except json.JSONDecodeError as err:
        raise BackboneError(f"{shipped} is not valid JSON: {err}") from None
    if not isinstance(found, dict):
        raise BackboneError(f"{shipped} is not a JSON object")
    return found


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
# open_clip's defaults (open_clip.transform.PreprocessCfg): OpenAI's normalisation, bicubic, shortest side.
_OPENAI_PREPROCESS = {"mean": tuple(open_clip.OPENAI_DATASET_MEAN), "std": tuple(open_clip.OPENAI_DATASET_STD),
                      "interpolation": "bicubic", "resize_mode": "shortest"}


def resolve_preprocess(name: str, source: str | Path | None, preprocess: str = "",
                       openai_weights: bool = False) -> tuple[dict, str | None]:
    """The image preprocessing of the weights ``source`` of model ``name``, and a warning if guessed.

    In order: the tag ``preprocess`` names (``openai``: OpenAI's, for any model); a tag's own
    open_clip pretrained config; OpenAI's for OpenAI-format files, the toy checkpoint and random
    weights; the ``preprocess_cfg`` of an ``open_clip_config.json`` next to the checkpoint (as
    Hugging Face checkpoints ship it). Otherwise it is guessed, with a warning: the tag of ``name``
    whose name or Hugging Face id the checkpoint's path contains, else the one preprocessing
    that all tags of ``name`` share, else OpenAI's.

    Returns:
        (``{"mean": (3,), "std": (3,), "interpolation": str, "resize_mode": str}``, warning or None).

    Raises:
        BackboneError: ``preprocess`` is not a pretrained tag of ``name``, or the
            ``open_clip_config.json`` is malformed.
    """
    tags = open_clip.list_pretrained_tags_by_model(name)
    if preprocess:
        if preprocess.lower() == "openai":
            return dict(_OPENAI_PREPROCESS), None
        if preprocess not in tags:
            raise BackboneError(f"preprocess={brief(preprocess)} is not a pretrained tag of {name}: expected openai or "
                                f"one of {', '.join(tags) or 'none'}")
        return _tag_preprocess(name, preprocess), None
    if isinstance(source, str):
        return _tag_preprocess(name, source), None
    if source is None or source in TOY_CHECKPOINTS.values() or openai_weights:
        return dict(_OPENAI_PREPROCESS), None
    found = _shipped_config(source).get("preprocess_cfg")
    if isinstance(found, dict) and found:
        return _merge_preprocess(found), None
    hint = f"pass preprocess=<tag> (tags of {name}: {', '.join(dict.fromkeys(['openai', *tags]))}) to name it"
    squashed = _squash(str(source))
    named = [t for t in tags if _squash(t) in squashed or (_hf_name(name, t) and _hf_name(name, t) in squashed)]
    if named:
        tag = max(named, key=lambda t: len(_squash(t)))
        return _tag_preprocess(name, tag), (f"image preprocessing of {source} guessed from its path: that of "
                                            f"{name} tag {tag}; {hint}")
    distinct = {json.dumps(_tag_preprocess(name, t)) for t in tags}
    if len(distinct) == 1:
        shared = _merge_preprocess(json.loads(distinct.pop()))
        return shared, f"image preprocessing of {source} guessed: the one all {name} tags share; {hint}"
    return dict(_OPENAI_PREPROCESS), f"image preprocessing of {source} guessed: OpenAI's; {hint}"


def _tag_preprocess(name: str, tag: str) -> dict:
    return _merge_preprocess(open_clip.get_pretrained_cfg(name, tag))


def _merge_preprocess(found: dict) -> dict:
    out = {**_OPENAI_PREPROCESS, **{k: found[k] for k in _PREPROCESS_KEYS if k in found}}
    out["mean"], out["std"] = tuple(float(v) for v in out["mean"]), tuple(float(v) for v in out["std"])
    return out


def _squash(text: str) -> str:
    """Lower case letters and digits only: ``laion2B-s32B`` and ``laion2b_s32b`` compare equal."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _hf_name(name: str, tag: str) -> str:
    """The squashed repository name of a tag's Hugging Face id (``laion/CLIP-ViT-L-14-laion2B-s32B-b82K``)."""
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "")
    return _squash(hub.strip("/").split("/")[-1]) if hub else ""
