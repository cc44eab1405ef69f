"""Make PyPI's torchvision importable beside the CPU build of torch.

PyPI's ``torchvision==0.28.0`` wheel ships C++ kernels built against the CUDA
build of torch. Beside the CPU build of ``torch==2.13.0`` that extension does
not load, and ``torchvision/_meta_registrations.py`` then fails at import with
``operator torchvision::nms does not exist``: it registers fake kernels for two
operators (``nms``, ``qnms``) whose schemas the extension would have defined.
``open_clip`` imports torchvision for its transforms, so this breaks
``import open_clip``.

Importing this module imports torchvision; only if that fails with exactly this
error does it define the two missing schemas and import again. Where
torchvision's own kernels load (a matching CUDA install), nothing is changed.
The schemas have no kernels: ``torchvision.ops.nms`` still fails, and this
project never calls it. Every anchoropt module that imports open_clip imports
this module first (``anchoropt/__init__`` does not: it stays free of torch).
"""
import sys

import torch

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _import_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _MISSING_SCHEMAS:
            lib.define(schema)
        # A Library unregisters its definitions when garbage-collected: keep it.
        sys.modules[__name__]._library = lib
        import torchvision  # noqa: F401,F811


_import_torchvision()
