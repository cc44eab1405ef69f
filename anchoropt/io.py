"""Atomic writes: a reader (or a killed writer) never sees a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(json.dumps(obj, indent=2) + "\n", path)
