"""Resolving relative paths, the one place.

Rules:

- A path-valued TrainConfig key (``data_root``, ``cache_dir``, ``descriptions``,
  ``descriptions_dir``, and ``pretrained`` when it names a file) is relative to the working
  directory of the command, wherever it is written (suite, config file, ``key=value``), as
  ``anchoropt train`` reads it. :func:`anchoropt.config.make_config` makes them absolute, so Ray
  workers (which run in other folders) and stored search bases see the same file.
- A file that a YAML file names as a companion (a suite method's ``config: tuned.yaml``) is
  relative to the folder of the file that names it.
- A name that becomes a folder or file name (dataset, suite method, suite name) is a plain name
  (:func:`check_name`), and a path read from a data file (a split JSON's image path, a
  ``meta.json``'s files) stays inside its dataset's folder, symlinks resolved (:func:`inside`): neither can reach
  outside ``data_root``, ``--results`` or a report's sight.
- The default suites and search spaces live once, in the repository's ``benchmarks/`` and
  ``search_spaces/``; an install ships them as package data ``anchoropt.suites`` and
  ``anchoropt.spaces`` (setup.py). :func:`shipped` finds them either way, and :func:`default_file`
  reads a README path such as ``benchmarks/toy11.yaml`` from the shipped copy where the working
  directory has no such file (an installed package, run outside a checkout).
"""
from __future__ import annotations

import importlib.resources
import os
import re
import sys
from pathlib import Path

from anchoropt.errors import ConfigError, brief

#: package-data name -> the repository folder it is built from (setup.py)
SHIPPED = {"suites": "benchmarks", "spaces": "search_spaces"}
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


def shipped(kind: str, name: str) -> Path:
    """A default file shipped with anchoropt: ``kind`` ``suites`` (e.g. ``toy11.yaml``) or ``spaces``
    (e.g. ``anchors.yaml``). In a source checkout (PYTHONPATH or editable install) the repository's
    own folder, else the installed package data (``importlib.resources``)."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / SHIPPED[kind]).is_dir():
        return checkout / SHIPPED[kind] / name
    return Path(str(importlib.resources.files(f"anchoropt.{kind}").joinpath(name)))


#: a plain name: letters, digits, ``_``, then also ``.`` and ``-``; no ``/``, no leading ``.`` (so no ``..``)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a plain name (:data:`NAME`), usable as one folder name on every system.

    Raises:
        ConfigError: one line naming ``what`` (``dataset``, ``suite method``, ...) and the value.
    """
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(f"{what} {brief(value)} is not a plain name: use letters, digits and _ "
                          "(then also . and -), at most 100 characters")
    return value


def inside(root: str | Path, relative: str | Path, what: str, error: type[Exception] = ConfigError) -> Path:
    """``root / relative`` (``..`` and an absolute ``relative`` resolved), checked to lie inside ``root``
    both as written and with symlinks resolved (``os.path.realpath``): a symlinked dataset folder is
    fine, a link inside it to a file elsewhere is not. Returns the path as written (not resolved).

    Raises:
        error: one line naming ``what`` (e.g. the split file and entry) and the path, when the result
            is outside ``root`` or holds a NUL character (which no file name can).
    """
    if "\0" in os.fspath(relative):
        raise error(f"{what}: path {brief(os.fspath(relative))} holds a NUL character")
    base = os.path.normpath(absolute(root))
    path = os.path.normpath(os.path.join(base, os.fspath(relative)))
    real_base = os.path.realpath(base)
    if os.path.commonpath([base, path]) != base or \
            os.path.commonpath([real_base, os.path.realpath(path)]) != real_base:
        raise error(f"{what}: path {brief(os.fspath(relative))} leads outside {base}")
    return Path(path)


def default_file(path: str | Path, kind: str) -> Path:
    """``path`` (``~`` expanded) when it exists. Otherwise, when its file name is one anchoropt ships
    as ``kind`` (``suites``: ``benchmarks/*.yaml``, ``spaces``: ``search_spaces/*.yaml``), the
    shipped copy, saying so on stderr: the README's ``benchmarks/toy11.yaml`` then works from a
    non-editable install too. Any other missing path is returned as is, for the reader's own
    "not found" error (:func:`shipped_note` names the shipped files for it)."""
    given = Path(path).expanduser()
    if given.exists():
        return given
    copy = shipped(kind, given.name)
    if copy.is_file():
        print(f"anchoropt: {path} is not here: reading the copy shipped with anchoropt, {copy}", file=sys.stderr)
        return copy
    return given


def shipped_note(kind: str) -> str:
    """``the suites shipped with anchoropt (FOLDER): a.yaml, b.yaml``, for a not-found error."""
    folder = shipped(kind, "x").parent
    names = sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []
    return f"the {kind} shipped with anchoropt ({folder}): {', '.join(names) or 'none'}"
