"""What a run trains and is scored on: class sets, cached image features, descriptions.

Protocols (SPEC section 8):
- ``eval_split="test"``: train on the base classes' few-shot images, score on the test
  images of the base and of the novel classes (the papers' practice).
- ``eval_split="val"``: leak-free; the base classes are split again into pseudo-base and
  pseudo-novel halves, training uses pseudo-base shots and scoring the few-shot val
  images of both halves. Novel classes are never seen.
- ``protocol="cross_dataset"``: train on every class of the source dataset's few-shot
  images, score the test images of the source and of each target dataset, all their classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from anchoropt.backbone import Backbone
from anchoropt.config import TrainConfig
from anchoropt.data import (DataError, DatasetSplits, Datum, base_novel_labels, build_dataset, fewshot_splits,
                            load_descriptions, subsample)
from anchoropt.data.descriptions import descriptions_path
from anchoropt.features import encode_images


@dataclass
class EvalSet:
    """Scored images of one class set: ``features [N, D]``, ``labels [N]`` in 0..C-1.

    ``seen``: the classes were trained on (scored with the prompt's logits; unseen classes use the
    anchor ensemble, SPEC section 4). ``template``: the zero-shot template of their dataset;
    ``dataset``: its name (a prompt may depend on it: ATPrompt's attribute words). ``items``: the N
    images, for methods that prompt the image tower (:meth:`Trainer.eval_images`)."""

    classnames: list[str]
    features: torch.Tensor
    labels: torch.Tensor
    seen: bool
    template: str
    dataset: str
    items: list[Datum] = field(default_factory=list, repr=False)


@dataclass
class Task:
    """Training classes with ``train_features [N, V, D]`` / ``train_labels [N]`` of the images
    ``train_items``, and the scored sets ``evals`` (``"base"`` and ``"novel"``; cross-dataset: one per
    dataset name, source first). ``val``: the few-shot val images of the training classes, built for
    ``stage1_select=best_val`` only (never scored as a result)."""

    dataset: str
    classnames: list[str]
    train_features: torch.Tensor
    train_labels: torch.Tensor
    evals: dict[str, EvalSet]
    descriptions_path: Path | None
    train_items: list[Datum] = field(default_factory=list, repr=False)
    val: EvalSet | None = None


def build_task(cfg: TrainConfig, backbone: Backbone, device: str | torch.device = "cpu",
               data: DatasetSplits | None = None, targets: list[DatasetSplits] | None = None) -> Task:
    """Draw the shots, split classes, encode (or load cached) image features.

    ``data``: the dataset already read (else read here); ``targets``: cross-dataset target
    datasets already read (else read here from ``cfg.targets``).

    Raises:
        DataError: bad dataset input (see :func:`anchoropt.data.build_dataset`), or a
            cross-dataset run without targets.
    """
    data = data or build_dataset(cfg.data_root, cfg.dataset)
    train, val = fewshot_splits(data, cfg.shots, cfg.seed)
    names = data.classnames

    def features(items: list[Datum], views: int = 0) -> torch.Tensor:
        return encode_images(backbone, items, views, cfg.seed, cfg.cache_dir, device, cfg.crop_scale, cfg.flip)

    def eval_set(name: str, dataset: DatasetSplits, items: list[Datum], labels: list[int], seen: bool) -> EvalSet:
        return build_eval_set(cfg, backbone, device, name, dataset, items, labels, seen)

    if cfg.protocol == "cross_dataset":
        targets = targets if targets is not None else read_targets(cfg)
        trained = sorted(set(d.label for d in data.train))
        evals = {cfg.dataset: eval_set(cfg.dataset, data, data.test, trained, True)}
        for name, target in zip(cfg.target_list, targets):  # keyed by the names asked for
            evals[name] = eval_set(name, target, target.test, sorted(set(d.label for d in target.test)), False)
    else:
        trained, novel = base_novel_labels([d.label for d in data.train])
        scored = data.test
        if cfg.eval_split == "val":
            trained, novel = base_novel_labels(trained)
            scored = val
        evals = {"base": eval_set(cfg.dataset, data, scored, trained, True),
                 "novel": eval_set(cfg.dataset, data, scored, novel, False)}
    train_items = subsample(train, trained)
    if not train_items:
        raise DataError(f"dataset '{cfg.dataset}': no training images for the trained classes")
    stage1_val = eval_set(cfg.dataset, data, val, trained, True) if cfg.stage1_select == "best_val" else None
    if stage1_val is not None and not stage1_val.labels.numel():
        raise DataError(f"dataset '{cfg.dataset}': stage1_select=best_val needs val images of the trained classes")
    return Task(cfg.dataset, [names[i] for i in trained], features(train_items, cfg.train_views),
                _labels(train_items), evals, descriptions_path(cfg.dataset, cfg.descriptions, cfg.descriptions_dir,
                                                               data.descriptions), train_items, stage1_val)


def build_eval_set(cfg: TrainConfig, backbone: Backbone, device: str | torch.device, name: str,
                   dataset: DatasetSplits, items: list[Datum], labels: list[int], seen: bool) -> EvalSet:
    """The scored set of ``dataset``'s classes ``labels`` (relabelled 0..C-1 in that order) among
    ``items``, with their image features (cached under ``cfg.cache_dir``)."""
    items = subsample(items, labels)
    features = encode_images(backbone, items, 0, cfg.seed, cfg.cache_dir, device, cfg.crop_scale, cfg.flip)
    return EvalSet([dataset.classnames[i] for i in labels], features, _labels(items), seen, dataset.template, name,
                   items)


def read_targets(cfg: TrainConfig) -> list[DatasetSplits]:
    """The cross-dataset target datasets of ``cfg`` (under ``cfg.data_root``).

    Raises:
        DataError: no targets given, the source among them, or a target that does not load.
    """
    if not cfg.target_list:
        raise DataError(f"protocol=cross_dataset needs targets=<dataset,...> to evaluate on (source {cfg.dataset})")
    if cfg.dataset in cfg.target_list:
        raise DataError(f"cross-dataset source '{cfg.dataset}' is also listed in targets")
    return [build_dataset(cfg.data_root, name) for name in cfg.target_list]


def task_descriptions(cfg: TrainConfig, task: Task) -> list[list[str]]:
    """``n_descriptions`` sentences per training class (Stage I targets)."""
    if task.descriptions_path is None:
        raise DataError(f"dataset '{task.dataset}' has no LLM descriptions: set descriptions=<CuPL json> "
                        f"or descriptions_dir=<folder of CuPL files>")
    return load_descriptions(task.descriptions_path, task.classnames, cfg.n_descriptions)


def _labels(items: list[Datum]) -> torch.Tensor:
    return torch.tensor([d.label for d in items], dtype=torch.long)
