"""Stage I anchors from a file (``anchors=<file>``): the reference's Dassl checkpoints and this project's own.

The reference ships its Stage I result as Dassl checkpoints,
``anchor_weights/<Dataset>/anchor_prompt_learner/model.pth.tar`` of github.com/zhengli97/ATPrompt,
which ``trainers/coop_anchoropt.py`` (``CustomCLIP.__init__``) loads: a dict with ``state_dict``
(``anchor_ctx_1 [N, d]``, fp16, plus the fixed ``token_prefix``/``token_of``/``token_suffix``
buffers), ``epoch``, ``optimizer`` and ``scheduler``. Dassl pickles the scheduler's own state, which
holds the wrapped ``torch.optim.lr_scheduler`` and ``torch.optim`` objects, so
``torch.load(weights_only=True)`` refuses these files. :func:`read_anchor_file` reads them with a
restricted unpickler instead (the "restricting globals" pattern of Python's ``pickle`` docs): it
rebuilds tensors and plain containers, turns every class of an optimiser or scheduler module into an
inert placeholder that runs nothing, and refuses any other global, so no code from the file runs.
This project's files (``prompts.pt`` of a run, a Stage I cache entry) hold ``anchors [N, d]``.
"""
from __future__ import annotations

import collections
import hashlib
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from anchoropt.errors import ConfigError

#: what a checkpoint may rebuild: torch's tensor constructors and plain containers
SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "dict"): dict, ("__builtin__", "dict"): dict,
}
#: modules whose classes Dassl's optimiser/scheduler state pickles: read as :class:`_Inert`
STATE_MODULES = re.compile(r"(torch|dassl)\.optim(\..*)?")
DASSL_ANCHORS = "anchor_ctx_1"  # the reference's AnchorPromptLearner parameter [ANCHOR_LEN, d]


class _Inert:
    """Stands in for an optimiser or scheduler object of a checkpoint: built from nothing, keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[module, name]
        if STATE_MODULES.fullmatch(module):
            return _Inert
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


#: what ``torch.load(pickle_module=...)`` takes: torch reads the storages, this unpickler every global
_RESTRICTED = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, __name__="restricted_pickle",
                                    load=lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load())


@dataclass(frozen=True)
class AnchorFile:
    """Anchors read from a file: ``anchors [N, d]`` (float32), the file's sha256 (hex), its layout
    (``dassl``: the reference's checkpoint; ``anchoropt``: this project's) and the Stage I epoch the
    file says it holds (None when it says none)."""

    path: str
    anchors: torch.Tensor
    sha256: str
    layout: str
    epoch: int | None

    def check(self, n_anchors: int, width: int) -> torch.Tensor:
        """The anchors, once they fit the run.

        Raises:
            ConfigError: one line naming both values when the file's anchor count is not
                ``n_anchors`` or its width is not the backbone's token width ``width``.
        """
        n, d = self.anchors.shape
        if d != width:
            raise ConfigError(f"anchors={self.path}: anchor width {d} does not match the backbone's token width "
                              f"{width}")
        if n != n_anchors:
            raise ConfigError(f"anchors={self.path}: the file holds {n} anchors but n_anchors={n_anchors}")
        return self.anchors

    def summary(self) -> dict:
        """What the record keeps of the file (``training.stage1``)."""
        return {"anchors_file": self.path, "anchors_sha256": self.sha256, "anchors_layout": self.layout,
                "file_epoch": self.epoch}


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of the anchor file at ``path``: what a result trained with it depends on.

    Raises:
        ConfigError: one line naming the file where it cannot be read.
    """
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"anchors={path}: cannot read the file ({e.strerror or e})") from None


def read_anchor_file(path: str | Path) -> AnchorFile:
    """Read anchors ``[N, d]`` from a Dassl anchor checkpoint (``state_dict.anchor_ctx_1``) or one of
    this project's files (``anchors``), without running code from the file (module docstring).

    Raises:
        ConfigError: one line naming the file: missing, unreadable, refused (a global outside
            tensors, plain containers and optimiser/scheduler state, e.g. a ``__reduce__``
            payload), no anchors in it, or anchors that are not a finite ``[N, d]`` tensor.
    """
    path = Path(path)
    sha256 = file_sha256(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"anchors={path}: refused, {e}: only tensors, plain containers and optimiser state "
                          "are read from an anchor file") from None
    except Exception as e:  # noqa: BLE001  (torch raises many types on a file that is no checkpoint)
        raise ConfigError(f"anchors={path}: not a torch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    anchors, layout, epoch = _find_anchors(obj, path)
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 2 or not anchors.is_floating_point():
        raise ConfigError(f"anchors={path}: the anchors are not a [N, d] float tensor")
    anchors = anchors.detach().float()  # fp16 -> fp32 is exact
    if not torch.isfinite(anchors).all():
        raise ConfigError(f"anchors={path}: the anchors hold NaN or infinite values")
    return AnchorFile(str(path), anchors, sha256, layout, epoch)


def _find_anchors(obj, path: Path) -> tuple[object, str, int | None]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and DASSL_ANCHORS in obj["state_dict"]:
        epoch = obj.get("epoch")
        return obj["state_dict"][DASSL_ANCHORS], "dassl", epoch if isinstance(epoch, int) else None
    if isinstance(obj, dict) and "anchors" in obj:
        epoch = obj.get("epoch")
        return obj["anchors"], "anchoropt", int(epoch) if isinstance(epoch, (int, torch.Tensor)) else None
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(f"anchors={path}: no anchors found (expected state_dict.{DASSL_ANCHORS}, a Dassl anchor "
                      f"checkpoint, or anchors); the file holds {keys}")
