"""Image files: opening as RGB, identity for cache keys, and the decode check (PIL)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from anchoropt.data.datasets import DataError, Datum

# PIL decodes outside the GIL, so a few threads keep the cores busy.
_DECODE_THREADS = 4


def load_image(path: str) -> Image.Image:
    """Open an image as RGB (grey, palette, RGBA and CMYK are converted).

    Raises:
        DataError: missing or corrupt (e.g. truncated) file, naming it.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"corrupt image {path}: {err}") from None


def file_id(path: str) -> str:
    """``path:size:mtime_ns``: a file regenerated or replaced in place gets a new id.

    Raises:
        DataError: the file is missing, naming it."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def decode_error(path: str) -> str | None:
    """Why ``path`` cannot be decoded (missing, not an image, truncated), or None.

    JPEGs are decoded at 1/8 scale (PIL ``draft``): every byte is still read, so truncation and
    corrupt data are found at a fraction of a full decode."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except FileNotFoundError:
        return "not found"
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return str(err) or type(err).__name__
    return None


def undecodable(items: list[Datum], desc: str) -> list[tuple[str, str]]:
    """``(path, reason)`` of each image of ``items`` that cannot be decoded, in order; a tqdm bar
    named ``desc`` shows progress (on a terminal)."""
    paths = [d.impath for d in items]
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        reasons = list(tqdm(pool.map(decode_error, paths, chunksize=64), total=len(paths), desc=desc,
                            unit="img", disable=None, leave=False))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
