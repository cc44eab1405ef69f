"""Few-shot sampling and the base/novel class split (SPEC sections 7 and 8).

Sampling follows Dassl: seed Python's ``random`` with the run seed, group by label,
draw K items per class with ``random.sample``. When the user's dataset folder holds
Dassl's cache ``split_fewshot/shot_{K}-seed_{S}.pkl``, its exact images are used
instead, so results compare with the reference code on the very same images.
"""
from __future__ import annotations

import math
import pickle
import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from anchoropt.data.datasets import DataError, DatasetSplits, Datum

_DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class _PickledDatum:
    """Stand-in for Dassl's ``Datum`` while unpickling; only its attributes are read."""


class _DatumUnpickler(pickle.Unpickler):
    """Admits only Dassl's ``Datum`` record type: a pickle can run arbitrary code."""

    def find_class(self, module: str, name: str):
        if (module, name) == _DASSL_DATUM:
            return _PickledDatum
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only Dassl Datum records are allowed")


def read_dassl_fewshot(path: Path, data: DatasetSplits, shots: int) -> dict[str, list[Datum]]:
    """Read Dassl's ``{"train": [Datum], "val": [Datum]}`` few-shot pickle, checked against ``data``.

    Image paths in the file are absolute on the machine that wrote it. Each is matched to the
    current split by its longest tail that is an image path of that split (relative to the image
    folder), so the folder names of the old or new data root do not matter; the stored label and
    class name must equal the current split's, and each class must have as many images as Dassl
    draws from it: ``min(shots, n)`` in train, ``min(shots, 4, n)`` in val (n: the class's images
    in the split). Dassl's ImageNet files hold no val list.

    Returns:
        ``{"train": [...], "val": [...]}`` with the current split's ``Datum`` objects (``val``
        absent when the file holds none).

    Raises:
        DataError: unreadable file, a record of any other type than ``Datum``, records that
            are not in the current split or carry another label or class name (count and first one),
            or a class with another number of images than Dassl draws (the first such class).
    """
    try:
        with open(path, "rb") as f:
            raw = _DatumUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, OSError) as err:
        raise DataError(f"few-shot file {path} cannot be read: {err}") from None
    if not isinstance(raw, dict) or "train" not in raw:
        raise DataError(f"few-shot file {path} does not hold a {{'train': [...], 'val': [...]}} dict")
    out = {}
    for part in ("train", "val"):
        if part == "val" and not raw.get("val"):
            continue
        prefix = len(str(data.image_dir).rstrip("/")) + 1  # readers join image paths under image_dir
        current = {d.impath[prefix:]: d for d in getattr(data, part)}
        items, stale = [], []
        for i, rec in enumerate(raw.get(part) or []):
            state = getattr(rec, "__dict__", {})
            if not {"_impath", "_label", "_classname"} <= set(state):
                raise DataError(f"few-shot file {path} {part}[{i}] is not a Dassl Datum")
            stored = str(state["_impath"]).replace("\\", "/")
            found = _match_tail(stored, current)
            if found is None:
                stale.append(f"{part}[{i}] {stored} is not in the current {part} split")
            elif (found.label, found.classname) != (int(state["_label"]), str(state["_classname"])):
                stale.append(f"{part}[{i}] {stored} is label {state['_label']} '{state['_classname']}' there, "
                             f"{found.label} '{found.classname}' in the current split")
            else:
                items.append(found)
        if stale:
            raise DataError(f"few-shot file {path} does not match {data.sources.get(part, data.root)}: "
                            f"{len(stale)} of {len(stale) + len(items)} {part} items differ, first {stale[0]}; "
                            f"delete the file to draw new shots")
        want = Counter(d.label for d in getattr(data, part))
        have = Counter(d.label for d in items)
        cap = shots if part == "train" else min(shots, 4)
        wrong = [c for c in range(len(data.classnames)) if have[c] != min(cap, want[c])]
        if wrong:
            c = wrong[0]
            raise DataError(f"few-shot file {path} has {have[c]} {part} images of class '{data.classnames[c]}' "
                            f"(label {c}), Dassl draws {min(cap, want[c])} for {shots} shots ({len(wrong)} classes "
                            f"differ); delete the file to draw new shots")
        out[part] = items
    return out


def _match_tail(stored: str, current: dict[str, Datum]) -> Datum | None:
    parts = [p for p in stored.split("/") if p]
    for start in range(len(parts)):  # longest tail first
        found = current.get("/".join(parts[start:]))
        if found is not None:
            return found
    return None


def sample_fewshot(items: list[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """K items per label, drawn as Dassl does (``random.sample`` per label, labels in
    first-seen order). Classes with fewer than K items keep all of them."""
    by_label: dict[int, list[Datum]] = defaultdict(list)
    for d in items:
        by_label[d.label].append(d)
    out = []
    for group in by_label.values():
        out += rng.sample(group, shots) if len(group) >= shots else list(group)
    return out


def shots_shortfall(data: DatasetSplits, shots: int) -> str | None:
    """A one-line warning when some class has fewer than ``shots`` training images, else None
    (those classes keep all their images: the run is not K-shot on them)."""
    counts = Counter(d.label for d in data.train)
    short = sorted(label for label in range(len(data.classnames)) if counts.get(label, 0) < shots)
    if shots <= 0 or not short:
        return None
    smallest = min(counts.get(label, 0) for label in short)
    return (f"shots={shots} but {len(short)} of {len(data.classnames)} classes of {data.name} have fewer training "
            f"images (fewest: {smallest}, class '{data.classnames[short[0]]}'); they keep all they have")


def fewshot_splits(data: DatasetSplits, shots: int, seed: int, val_shots: int = 0) -> tuple[list[Datum], list[Datum]]:
    """(train, val) few-shot lists: K per class from train, ``val_shots`` per class from val (0:
    Dassl's min(K, 4); a class with fewer val images keeps all of them).

    Uses ``<dataset>/split_fewshot/shot_{K}-seed_{seed}.pkl`` when present (its val list if it
    holds one and ``val_shots`` is Dassl's, else the val images drawn as without the file). ``shots <= 0``
    means all training images.

    Raises:
        DataError: the cached pickle does not match the current split (see :func:`read_dassl_fewshot`).
    """
    if shots <= 0:
        return list(data.train), list(data.val)
    shortfall = shots_shortfall(data, shots)
    if shortfall:
        warnings.warn(shortfall, stacklevel=2)
    rng = random.Random(seed)  # one stream for train then val, as Dassl draws them
    train = sample_fewshot(data.train, shots, rng)
    dassl_val = min(shots, 4)
    val = sample_fewshot(data.val, val_shots or dassl_val, rng)
    cached = data.root / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"
    if cached.is_file():
        found = read_dassl_fewshot(cached, data, shots)
        if val_shots not in (0, dassl_val):
            return found["train"], val
        return found["train"], found.get("val", val)  # Dassl's ImageNet files hold no val: drawn as without one
    return train, val


def base_novel_labels(labels: list[int]) -> tuple[list[int], list[int]]:
    """SPEC section 7: sorted label ids, first ceil(n/2) are base, the rest novel."""
    ids = sorted(set(labels))
    cut = math.ceil(len(ids) / 2)
    return ids[:cut], ids[cut:]


def subsample(items: list[Datum], keep: list[int]) -> list[Datum]:
    """Keep items whose label is in ``keep`` and relabel them 0..k-1 in sorted order of ``keep``."""
    relabel = {old: new for new, old in enumerate(sorted(keep))}
    return [Datum(d.impath, relabel[d.label], d.classname) for d in items if d.label in relabel]
