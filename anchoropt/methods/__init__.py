"""Methods behind one interface (:class:`~anchoropt.methods.base.Method`), by name.

``TrainConfig.method`` picks one from :data:`METHODS`; a new method subclasses ``Method`` (or
:class:`~anchoropt.methods.anchoropt.AnchorOPTMethod` to add AnchorOPT to a base) and is listed
here and in ``anchoropt.config.METHODS`` (kept torch-free for the CLI).
"""
from __future__ import annotations

from anchoropt.engine import Trainer
from anchoropt.methods.anchoropt import AnchorOPT, AnchorOPTMethod
from anchoropt.methods.atprompt import AttributeTokens, CoOpATP
from anchoropt.methods.base import Method, ZeroShot
from anchoropt.methods.cocoop import CoCoOp, CoCoOpAnchorOPT, CoCoOpATP
from anchoropt.methods.coop import CoOp
from anchoropt.methods.dept import DePT, DePTAnchorOPT, DePTATP
from anchoropt.methods.maple import MaPLe, MaPLeAnchorOPT, MaPLeATP

METHODS: dict[str, type[Method]] = {m.name: m for m in (ZeroShot, CoOp, CoOpATP, AnchorOPT, CoCoOp, CoCoOpATP,
                                                         CoCoOpAnchorOPT, DePT, DePTATP, DePTAnchorOPT, MaPLe,
                                                         MaPLeATP, MaPLeAnchorOPT)}

__all__ = ["METHODS", "AnchorOPT", "AnchorOPTMethod", "AttributeTokens", "CoCoOp", "CoCoOpAnchorOPT", "CoCoOpATP",
           "CoOp", "CoOpATP", "DePT", "DePTATP", "DePTAnchorOPT", "MaPLe", "MaPLeATP", "MaPLeAnchorOPT", "Method",
           "ZeroShot", "build_method"]


def build_method(trainer: Trainer) -> Method:
    """The method ``trainer.cfg.method`` names, built on ``trainer``."""
    return METHODS[trainer.cfg.method](trainer)
