"""What a run trains and is scored on: class sets, cached image features, descriptions.

Protocols (SPEC section 8):
- ``objective="test"``: train on the base classes' few-shot images, score on the test
  images of the base and of the novel classes (the papers' practice).
- ``objective="val"``: leak-free; the base classes are split again into pseudo-base and
  pseudo-novel halves, training uses pseudo-base shots and scoring the few-shot val
  images of both halves. Novel classes are never seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anchoropt.backbone import Backbone
from anchoropt.config import TrainConfig
from anchoropt.data import (CUPL_FILES, DataError, DatasetSplits, Datum, base_novel_labels, build_dataset, fewshot_splits,
                            load_descriptions, subsample)
from anchoropt.features import encode_images


@dataclass
class EvalSet:
    """Scored images of one class set: ``features [N, D]``, ``labels [N]`` in 0..C-1."""

    classnames: list[str]
    features: torch.Tensor
    labels: torch.Tensor


@dataclass
class Task:
    """Training classes with ``train_features [N, V, D]`` / ``train_labels [N]``, the template,
    and the scored sets ``evals`` (``"base"``, ``"novel"``)."""

    dataset: str
    classnames: list[str]
    train_features: torch.Tensor
    train_labels: torch.Tensor
    template: str
    evals: dict[str, EvalSet]
    descriptions_path: Path | None


def build_task(cfg: TrainConfig, backbone: Backbone, device: str | torch.device = "cpu",
               data: DatasetSplits | None = None) -> Task:
    """Draw the shots, split classes, encode (or load cached) image features.

    ``data``: the dataset already read (else read here).

    Raises:
        DataError: bad dataset input (see :func:`anchoropt.data.build_dataset`).
    """
    data = data or build_dataset(cfg.data_root, cfg.dataset)
    train, val = fewshot_splits(data, cfg.shots, cfg.seed)
    base, novel = base_novel_labels([d.label for d in data.train])
    if cfg.objective == "val":
        base, novel = base_novel_labels(base)
        scored = val
    else:
        scored = data.test
    names = data.classnames
    train_items = subsample(train, base)
    if not train_items:
        raise DataError(f"dataset '{cfg.dataset}': no training images for the base classes")

    def features(items: list[Datum], views: int = 0) -> torch.Tensor:
        return encode_images(backbone, items, views, cfg.seed, cfg.cache_dir, device, cfg.crop_scale, cfg.flip)

    evals = {}
    for split, labels in (("base", base), ("novel", novel)):
        items = subsample(scored, labels)
        evals[split] = EvalSet([names[i] for i in labels], features(items), _labels(items))
    return Task(cfg.dataset, [names[i] for i in base], features(train_items, cfg.train_views), _labels(train_items),
                data.template, evals, _descriptions_path(cfg, data.descriptions))


def task_descriptions(cfg: TrainConfig, task: Task) -> list[list[str]]:
    """``n_descriptions`` sentences per training class (Stage I targets)."""
    if task.descriptions_path is None:
        raise DataError(f"dataset '{task.dataset}' has no LLM descriptions: set descriptions=<CuPL json> "
                        f"or descriptions_dir=<folder of CuPL files>")
    return load_descriptions(task.descriptions_path, task.classnames, cfg.n_descriptions)


def _labels(items: list[Datum]) -> torch.Tensor:
    return torch.tensor([d.label for d in items], dtype=torch.long)


def _descriptions_path(cfg: TrainConfig, shipped: Path | None) -> Path | None:
    if cfg.descriptions:
        return Path(cfg.descriptions).expanduser()
    if cfg.descriptions_dir and cfg.dataset in CUPL_FILES:
        return Path(cfg.descriptions_dir).expanduser() / CUPL_FILES[cfg.dataset]
    return shipped
