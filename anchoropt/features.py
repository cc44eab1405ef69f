"""Image features of the frozen image encoder, computed once and cached on disk.

The image encoder never trains, so a run (and every trial of a search) reads
features instead of images: ``[N, D]`` for evaluation images and ``[N, V, D]``
for training images, V fixed augmented views drawn once per image with a seed.
The cache key covers the backbone's weights and image preprocessing, the exact image list (paths, sizes, modification
times: regenerated or replaced images get new features), the views and the seed, so it is shared
by every run on the same (backbone, dataset, split, seed, shots).
Files are written atomically under a file lock, so concurrent trials and benchmark cells
encode each image set once and never read a half-written file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from filelock import FileLock

from anchoropt.backbone import Backbone
from anchoropt.data.datasets import DataError, Datum
from anchoropt.data.images import file_id, load_image
from anchoropt.io import save_tensors

BATCH = 128


def cache_key(backbone: Backbone, items: list[Datum], views: int, seed: int, crop_scale: float, flip: bool) -> str:
    """sha1 over backbone name/weights/preprocessing, image files, views (0 = test transform), seed and augmentation.

    Raises:
        DataError: an image file is missing, naming it."""
    payload = json.dumps([backbone.name, backbone.weights_id, backbone.preprocess_cfg,
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
    path = Path(cache_dir).expanduser() / "features" / f"{cache_key(backbone, items, views, seed, crop_scale, flip)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # concurrent trials and cells encode each image set once
        if not path.is_file():
            save_tensors(_encode_seeded(backbone, items, views, seed, device, crop_scale, flip), path)
    return torch.load(path, weights_only=True)


def _encode_seeded(backbone: Backbone, items: list[Datum], views: int, seed: int, device, crop_scale: float,
                   flip: bool) -> torch.Tensor:
    """Encode with torch's RNG seeded for the augmentation, restoring the caller's RNG after."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return _encode(backbone, items, views, device, backbone.augment(crop_scale, flip))
    finally:
        torch.random.set_rng_state(gen_state)


def _encode(backbone: Backbone, items: list[Datum], views: int, device, augment) -> torch.Tensor:
    model = backbone.model
    out = []
    for start in range(0, len(items), BATCH):
        images = [load_image(d.impath) for d in items[start:start + BATCH]]
        if views == 0:
            batch = torch.stack([backbone.preprocess(im) for im in images])
        else:
            batch = torch.stack([augment(im) for im in images for _ in range(views)])
        with torch.autocast("cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda"):
            feats = model.encode_image(batch.to(device)).float().cpu()
        out.append(feats if views == 0 else feats.view(len(images), views, -1))
    return torch.cat(out)
