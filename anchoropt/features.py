"""Image features of the frozen image encoder, computed once and cached on disk.

The image encoder never trains, so a run (and every trial of a search) reads
features instead of images: ``[N, D]`` for evaluation images and ``[N, V, D]``
for training images, V fixed augmented views drawn once per image with a seed.
The cache key covers the backbone's weights, activation and image preprocessing, the exact image list (paths, sizes, modification
times: regenerated or replaced images get new features), the views and the seed, so it is shared
by every run on the same (backbone, dataset, split, seed, shots).
Cache files are verified on load (:mod:`anchoropt.cache`: checksum, shapes, provenance) and
written atomically under a file lock, so concurrent trials and benchmark cells encode each image
set once, never read a half-written file, and rebuild a damaged one.
Methods that prompt the image tower (MaPLe) train on pixels instead: :func:`image_tensors` gives
the very images (same crops) these features come from, as uint8, kept in memory by the trainer.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from tqdm.auto import tqdm

import anchoropt.torchvision_compat  # noqa: F401  (before torchvision)
from anchoropt.backbone import Backbone
from anchoropt.data.datasets import DataError, Datum
from anchoropt.data.images import file_id, load_image
from anchoropt.cache import cached

BATCH = 128


def cache_key(backbone: Backbone, items: list[Datum], views: int, seed: int, crop_scale: float, flip: bool) -> str:
    """sha1 over backbone name/weights/activation/preprocessing, image files, views (0 = test transform), seed and augmentation.

    Raises:
        DataError: an image file is missing, naming it."""
    payload = json.dumps([backbone.name, backbone.weights_id, backbone.activation, backbone.preprocess_cfg,
                          [file_id(d.impath) for d in items], views, seed,
                          crop_scale if views else None, flip if views else None])
    return hashlib.sha1(payload.encode()).hexdigest()


@torch.no_grad()
def encode_images(backbone: Backbone, items: list[Datum], views: int = 0, seed: int = 0,
                  cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
                  crop_scale: float = 0.08, flip: bool = True) -> torch.Tensor:
    """Image features (not normalised), float32 on CPU.

    Args:
        items: N images.
        views: 0 for the test transform (returns ``[N, D]``); V >= 1 for V augmented views
            drawn with torch's RNG seeded by ``seed`` (returns ``[N, V, D]``).
        cache_dir: folder for cached features; None disables the cache.
        crop_scale, flip: training augmentation (see :meth:`Backbone.augment`).

    Raises:
        DataError: an image is missing or corrupt.
    """
    if not items:
        raise DataError("no images to encode: the split is empty")
    if cache_dir is None:
        return _encode_seeded(backbone, items, views, seed, device, crop_scale, flip)
    key = cache_key(backbone, items, views, seed, crop_scale, flip)
    provenance = {"backbone": backbone.name, "weights": backbone.weights_id, "images": len(items),
                  "first_image": str(items[0].impath), "views": views, "seed": seed}
    return cached(Path(cache_dir).expanduser() / "features" / f"{key}.pt", "features", key, provenance,
                  lambda: _encode_seeded(backbone, items, views, seed, device, crop_scale, flip))


def image_tensors(backbone: Backbone, items: list[Datum], views: int = 0, seed: int = 0, crop_scale: float = 0.08,
                  flip: bool = True) -> torch.Tensor:
    """The preprocessed images that :func:`encode_images` encodes with the same arguments, as uint8
    pixels before normalisation (a quarter of float32's memory): ``[N, 3, H, W]`` (``views`` 0, test
    transform) or ``[N, V, 3, H, W]`` (the same V augmented views, drawn with the same seed).
    :func:`normalize_images` makes them model input. For methods that prompt the image tower (MaPLe).

    Raises:
        DataError: no items, or an image is missing or corrupt.
    """
    if not items:
        raise DataError("no images to load: the split is empty")
    return torch.cat(list(_pixel_batches(backbone, items, views, seed, crop_scale, flip)))


def normalize_images(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float model input: ``/ 255`` then the weights' mean/std, the
    operations of torchvision's ``ToTensor`` + ``Normalize`` (the same values)."""
    return TF.normalize(pixels.float().div(255), backbone.mean, backbone.std)


def _pixel_batches(backbone: Backbone, items: list[Datum], views: int, seed: int, crop_scale: float,
                   flip: bool) -> Iterator[torch.Tensor]:
    """uint8 batches ``[b, 3, H, W]`` / ``[b, V, 3, H, W]`` of ``BATCH`` images, augmented with torch's
    RNG seeded by ``seed`` (image by image, view by view), the caller's RNG restored after."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        transform = _uint8(backbone.preprocess if views == 0 else backbone.augment(crop_scale, flip))
        for start in range(0, len(items), BATCH):
            images = [load_image(d.impath) for d in items[start:start + BATCH]]
            if views == 0:
                yield torch.stack([transform(im) for im in images])
            else:
                yield torch.stack([torch.stack([transform(im) for _ in range(views)]) for im in images])
    finally:
        torch.random.set_rng_state(gen_state)


def _uint8(transform: T.Compose) -> T.Compose:
    """``transform`` with its trailing ``ToTensor`` and ``Normalize`` replaced by ``PILToTensor``
    (neither draws random numbers, so the crops stay those of ``transform``)."""
    steps = [t for t in transform.transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    return T.Compose([*steps, T.PILToTensor()])


def _encode_seeded(backbone: Backbone, items: list[Datum], views: int, seed: int, device, crop_scale: float,
                   flip: bool) -> torch.Tensor:
    from tqdm.auto import tqdm

    model = backbone.model
    out = []
    bar = tqdm(total=len(items), desc=f"features: {len(items)} images" + (f" x {views} views" if views else ""),
               unit="img", leave=False, disable=None)  # shown on a terminal only (not in Ray workers' logs)
    for pixels in _pixel_batches(backbone, items, views, seed, crop_scale, flip):
        batch = normalize_images(backbone, pixels.flatten(0, 1) if views else pixels)
        with torch.autocast("cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
            feats = model.encode_image(batch.to(device)).float().cpu()
        out.append(feats if views == 0 else feats.view(len(pixels), views, -1))
        bar.update(len(pixels))
    bar.close()
    return torch.cat(out)
