"""Resolving relative paths, the one place.

Rules:

- A path-valued TrainConfig key (``data_root``, ``cache_dir``, ``descriptions``,
  ``descriptions_dir``, and ``pretrained`` when it names a file) is relative to the working
  directory of the command, wherever it is written (suite, config file, ``key=value``), as
  ``anchoropt train`` reads it. :func:`anchoropt.config.make_config` makes them absolute, so Ray
  workers (which run in other folders) and stored search bases see the same file.
- A file that a YAML file names as a companion (a suite method's ``config: tuned.yaml``) is
  relative to the folder of the file that names it.
"""
from __future__ import annotations

import os
from pathlib import Path

#: ``pretrained`` values that are not files (backbone.create_backbone)
PRETRAINED_WORDS = ("", "none", "toy")


def absolute(value: str | Path, base: str | Path | None = None) -> str:
    """``value`` as an absolute, normalised path (``os.path.abspath``): ``~`` expanded, a relative path
    taken from ``base`` (a folder; default the working directory). Symlinks are kept, so the path
    names what the user named."""
    return os.path.abspath(os.path.join(os.path.expanduser(base or os.getcwd()), os.path.expanduser(value)))


def relative_to_file(value: str | Path, file: str | Path) -> str:
    """A path written inside ``file``, made absolute relative to that file's folder."""
    return absolute(value, os.path.dirname(absolute(file)))


def is_checkpoint_path(pretrained: str) -> bool:
    """Whether ``pretrained`` names a checkpoint file rather than an open_clip tag or ``toy``/``none``:
    it exists as a file, or looks like a path (a suffix such as ``.pt``, a ``/``, a leading ``~``)."""
    if pretrained.lower() in PRETRAINED_WORDS:
        return False
    return Path(pretrained).expanduser().is_file() or bool(Path(pretrained).suffix) or "/" in pretrained \
        or pretrained.startswith("~")
