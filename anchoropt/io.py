"""Atomic writes (a reader, or a killed writer, never sees a half-written file) and output-location
checks made before any work starts."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output location that cannot be written: a file where a folder is needed, or no write access."""


def check_output_dir(path: str | Path, what: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder; returns it (user-expanded).

    Called before a command trains anything, so a bad ``--out``/``--results``/``cache_dir`` costs no work.

    Raises:
        OutputError: one line naming ``what`` (the flag or key), the path and the fault.
    """
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise OutputError(f"{what} {path} must be a folder, but it is a file{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: no write permission in {existing}")
    return path


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_tensors(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (loadable with ``torch.load(weights_only=True)``)."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(json.dumps(obj, indent=2) + "\n", path)
