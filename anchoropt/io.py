"""Atomic writes (a reader, or a killed writer, never sees a half-written file) and output-location
checks made before any work starts.

Files get the mode an ordinary ``open(path, "w")`` would give (``0o666`` less the umask), so that
records, prompts and configs can be shared on a group cluster: ``mkstemp`` alone creates ``0o600``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def read_text(path: str | Path, what: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of a user's input file (``what``: ``suite file``, ``descriptions file``, ...).

    Raises:
        error: one line naming the file: not found, a folder, not UTF-8 (the byte), unreadable.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be read: {err.strerror}") from None


class OutputError(ValueError):
    """An output location that cannot be written: a file where a folder is needed, or no write access."""


#: bytes written (and synced) to probe an output folder; free space below which it is refused
PROBE_BYTES, MIN_FREE_BYTES = 4096, 64 * 2**20


def check_output_dir(path: str | Path, what: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder with at least
    :data:`MIN_FREE_BYTES` free on its disk; returns it (user-expanded). The nearest existing folder
    is probed by writing :data:`PROBE_BYTES` to a temporary file, which finds a read-only file
    system, a full disk or a quota that permissions do not show.

    Called before a command trains anything or starts Ray, so a bad ``--out``/``--results``/
    ``cache_dir`` costs no work and leaves nothing behind.

    Raises:
        OutputError: one line naming ``what`` (the flag or key), the path and the fault.
    """
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing == path and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    if not existing.is_dir():
        raise OutputError(f"{what} {path} cannot be created: {existing} is a file")
    try:  # finds what permissions do not show: a read-only or full file system, a quota
        with tempfile.TemporaryFile(dir=existing, prefix=".anchoropt-probe.") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except PermissionError:
        raise OutputError(f"{what} {path}: no write permission in {existing}") from None
    except OSError as err:
        raise OutputError(f"{what} {path}: cannot write in {existing}: {err.strerror}") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: no write permission in {existing}")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise OutputError(f"{what} {path}: only {free / 2**20:.0f} MiB free on the disk of {existing} (records, "
                          f"logs and checkpoints need at least {MIN_FREE_BYTES // 2**20} MiB)")
    return path


def _umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
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


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(json.dumps(obj, indent=2) + "\n", path)
