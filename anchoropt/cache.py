"""Verified cache files: image features, Stage I anchors, description targets.

A cache file is one JSON header line followed by the ``torch.save`` payload. The header holds the
cache's kind, its key, what it was made from (provenance: backbone, weights, dataset...), the
shape and dtype of every tensor, and the payload's length and SHA-256. :func:`cached` checks all
of them on load; a file that fails (truncated, bit-flipped, written by an older version, another
key) is never used: it is rebuilt, and one line on stderr names it and why.

Files are written atomically (:func:`anchoropt.io.write_bytes`) under a file lock, so concurrent
trials and benchmark cells build each entry once and never read a half-written file.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from filelock import FileLock

from anchoropt.io import write_bytes

FORMAT = "anchoropt-cache/1"
T = TypeVar("T", torch.Tensor, dict)


class CacheDamaged(ValueError):
    """A cache file that fails verification; the message says what failed."""


def key_digest(key: Any) -> str:
    """sha1 hex digest of a JSON-serialisable cache key (sorted keys: order-independent)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _layout(obj: torch.Tensor | dict) -> dict[str, list]:
    """``{name: [shape, dtype]}`` of a tensor (name ``""``) or a flat dict of tensors."""
    items = {"": obj} if isinstance(obj, torch.Tensor) else obj
    return {k: [list(v.shape), str(v.dtype)] for k, v in items.items()}


def save_cache(obj: T, path: str | Path, kind: str, key: str, provenance: dict) -> Path:
    """Write ``obj`` (a tensor or a flat ``{name: tensor}`` dict) with its verification header, atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = {"format": FORMAT, "kind": kind, "key": key, "provenance": provenance, "tensors": _layout(obj),
              "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return write_bytes(json.dumps(header).encode() + b"\n" + payload, path)


def load_cache(path: str | Path, kind: str, key: str) -> T:
    """The object :func:`save_cache` wrote to ``path``, verified.

    Raises:
        FileNotFoundError: no file.
        CacheDamaged: not this format, another kind or key, wrong length (truncated), checksum
            mismatch (flipped bytes), unreadable payload, or tensors other than the header's.
    """
    data = Path(path).read_bytes()
    line, sep, payload = data.partition(b"\n")
    try:
        header = json.loads(line) if sep else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CacheDamaged("no verification header (an older version's file, or damaged)")
    if header.get("kind") != kind or header.get("key") != key:
        raise CacheDamaged(f"holds {header.get('kind')} {header.get('key')}, not {kind} {key}")
    if len(payload) != header.get("bytes"):
        raise CacheDamaged(f"{len(payload)} payload bytes, {header.get('bytes')} written (truncated)")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheDamaged("checksum mismatch (bytes changed since written)")
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling fault means the same: rebuild)
        raise CacheDamaged(f"payload unreadable ({type(err).__name__})") from None
    if not isinstance(obj, (torch.Tensor, dict)) or _layout(obj) != header.get("tensors"):
        raise CacheDamaged("tensors differ from the header's shapes and dtypes")
    return obj


def cached(path: str | Path, kind: str, key: str, provenance: dict, build: Callable[[], T]) -> T:
    """The verified cache entry at ``path``, else ``build()`` saved there (under a file lock, so
    concurrent processes build it once). A damaged file is rebuilt with one line on stderr naming it.

    Args:
        kind: what the entry is (``features``, ``stage1``, ``description_targets``); key: its
            digest (:func:`key_digest`); provenance: JSON-serialisable description kept in the header.
    """
    path = Path(path)
    try:
        return load_cache(path, kind, key)  # files are replaced atomically: no lock needed to read
    except FileNotFoundError:
        pass
    except CacheDamaged:
        pass  # reported below, under the lock, once
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            return load_cache(path, kind, key)
        except FileNotFoundError:
            pass
        except CacheDamaged as err:
            print(f"cache file {path} is damaged ({err}): rebuilding it", file=sys.stderr)
        obj = build()
        save_cache(obj, path, kind, key, provenance)
        return obj
