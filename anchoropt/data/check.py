"""Dataset checks that find every fault before anything trains.

- :func:`check_dataset` (``anchoropt data check``): every split of a dataset: files present,
  decodable, every class with images, image counts per class, LLM description coverage, Dassl
  few-shot pickles consistent with the current split.
- :func:`check_run_images` (every run, before its backbone is built): the images the run reads
  (its few-shot train images, its scored images, cross-dataset targets' test images) are present
  and decodable. A set of images that passed is remembered in the cache folder by file identity
  (path, size, modification time), so later runs on the same files, which read cached features,
  decode nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from anchoropt.config import TrainConfig
from anchoropt.data.datasets import EXAMPLES, DataError, DatasetSplits, Datum, dataset_faults, read_dataset
from anchoropt.data.descriptions import description_faults, descriptions_path
from anchoropt.data.fewshot import fewshot_splits, read_dassl_fewshot
from anchoropt.data.images import file_id, undecodable

@dataclass
class CheckResult:
    """What :func:`check_dataset` found: ``lines`` describe the dataset, ``faults`` are one line each."""

    name: str
    lines: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    per_class: list[str] = field(default_factory=list)  # one line per class: images in each split


def check_dataset(root: str | Path, name: str, descriptions: str = "", descriptions_dir: str = "",
                  n_descriptions: int = 10) -> CheckResult:
    """Check dataset ``name`` under ``root`` completely (decodes every image once).

    ``descriptions`` / ``descriptions_dir``: where the CuPL descriptions are, as the run keys of the
    same names (default: the file a custom dataset ships). Never raises for a fault of the
    dataset: each is a line of ``faults``.
    """
    out = CheckResult(name)
    try:
        data = read_dataset(root, name)
    except DataError as err:
        out.faults.append(str(err))
        return out
    out.faults += dataset_faults(data)
    splits = data.splits()
    counts = {part: Counter(d.label for d in items) for part, items in splits.items()}
    for part, items in splits.items():
        out.lines.append(_counts_line(part, items, counts[part], data.classnames))
        broken = [(p, why) for p, why in undecodable(items, f"decoding {name} {part}") if why != "not found"]
        if broken:
            first = ", ".join(f"{p} ({why})" for p, why in broken[:EXAMPLES])
            out.faults.append(f"dataset '{name}': {part}: {len(broken)}/{len(items)} images cannot be decoded "
                              f"(first: {first})")
    width = max((len(c) for c in data.classnames), default=0)
    out.per_class = [f"{c:<{width}}  " + "  ".join(f"{part} {counts[part][i]:>5}" for part in splits)
                     for i, c in enumerate(data.classnames)]
    out.lines.append(_descriptions_line(data, descriptions, descriptions_dir, n_descriptions, out.faults))
    out.lines.append(_pickles_line(data, out.faults))
    return out


def _counts_line(part: str, items: list[Datum], counts: Counter, classnames: list[str]) -> str:
    if not items:
        return f"{part}: 0 images"
    fewest = min(range(len(classnames)), key=lambda i: counts[i])
    return (f"{part}: {len(items)} images, {len(counts)}/{len(classnames)} classes, per class "
            f"{counts[fewest]}..{max(counts.values())} (fewest: '{classnames[fewest]}')")


def _descriptions_line(data: DatasetSplits, descriptions: str, descriptions_dir: str, n: int,
                       faults: list[str]) -> str:
    path = descriptions_path(data.name, descriptions, descriptions_dir, data.descriptions)
    if path is None:
        return "descriptions: none found, not checked (pass --descriptions or --descriptions-dir)"
    try:
        found = description_faults(path, data.classnames, n)
    except DataError as err:
        faults.append(str(err))
        return f"descriptions: {path} unreadable"
    faults += found
    return (f"descriptions: {path}: {len(data.classnames) - len(found)}/{len(data.classnames)} classes "
            f"with >= {n} sentences")


def _pickles_line(data: DatasetSplits, faults: list[str]) -> str:
    pickles = sorted((data.root / "split_fewshot").glob("shot_*-seed_*.pkl"))
    bad = 0
    for path in pickles:
        shots = re.match(r"shot_(\d+)-seed_", path.name)
        try:
            if shots is None:
                raise DataError(f"few-shot file {path}: name is not shot_<K>-seed_<S>.pkl")
            read_dassl_fewshot(path, data, int(shots.group(1)))
        except DataError as err:
            faults.append(str(err))
            bad += 1
    return f"few-shot pickles: {len(pickles) - bad}/{len(pickles)} consistent with the split"


def run_images(cfg: TrainConfig, data: DatasetSplits, targets: list[DatasetSplits] | None) -> list[Datum]:
    """The images a run of ``cfg`` reads: few-shot train (and val) images, scored test images, and
    each cross-dataset target's test images."""
    if cfg.eval_split == "val":  # every seed of the run's repeats (cfg.val_seeds)
        items = [d for s in range(cfg.val_seeds) for d in sum(fewshot_splits(data, cfg.shots, cfg.seed + s,
                                                                              cfg.val_shots), [])]
    else:
        items = fewshot_splits(data, cfg.shots, cfg.seed)[0] + data.test
    return items + [d for target in targets or [] for d in target.test]


def check_run_images(cfg: TrainConfig, data: DatasetSplits, targets: list[DatasetSplits] | None = None) -> None:
    """Check that the images a run reads (:func:`run_images`) are present and decodable.

    A set that passed is remembered under ``cfg.cache_dir/checked`` by the files' identity, so
    runs on unchanged files (reading cached features) decode nothing.

    Raises:
        DataError: one line with the count of images that cannot be decoded and the first few.
    """
    items = run_images(cfg, data, targets)
    names = ", ".join([data.name, *(t.name for t in targets or [])])
    digest = hashlib.sha1(json.dumps([file_id(d.impath) for d in items]).encode()).hexdigest()
    marker = Path(cfg.cache_dir).expanduser() / "checked" / digest if cfg.cache_dir else None
    if marker is None:
        _decode_or_raise(items, names, data.name)
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{marker}.lock"):  # concurrent trials on the same images decode them once
        if not marker.is_file():
            _decode_or_raise(items, names, data.name)
            marker.touch()


def _decode_or_raise(items: list[Datum], names: str, dataset: str) -> None:
    broken = undecodable(items, f"checking {names} images (present, decodable)")
    if broken:
        first = ", ".join(f"{p} ({why})" for p, why in broken[:EXAMPLES])
        raise DataError(f"dataset '{names}': {len(broken)} of the {len(items)} images this run reads cannot be "
                        f"decoded (first: {first}); `anchoropt data check {dataset}` checks every split")
