"""LLM class descriptions in CuPL format, matched to class indices (SPEC sections 3 and 7).

A CuPL file is ``{classname: [sentence, ...]}``. Its names can differ from the
split file's in case, underscores, spacing and punctuation, so both sides are
normalised before matching. Class names can repeat (ImageNet has two "missile"
classes): descriptions are assigned per class index, the k-th class of a name
taking the k-th entry of that name in the file; a count mismatch is an error,
never a silent merge.
"""
from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

from anchoropt.data.datasets import EXAMPLES, DataError
from anchoropt.io import read_text

# CuPL file of each standard dataset (as distributed with the reference code).
CUPL_FILES = {
    "imagenet": "imagenet_prompts_full.json", "caltech101": "cal_prompts_full.json",
    "oxford_pets": "pets_prompts_full.json", "stanford_cars": "cars_prompts_full.json",
    "oxford_flowers": "flower_prompts_full.json", "food101": "food_prompts_full.json",
    "fgvc_aircraft": "airplane_prompts_full.json", "sun397": "sun_prompts_full.json",
    "dtd": "texture_prompts_full.json", "eurosat": "eurosat_prompts_full.json", "ucf101": "ucf_prompts_full.json",
}


class _Pairs(list):
    """A JSON object as its (key, value) pairs in file order (repeated names kept); a JSON array
    stays a plain list, so the two are told apart."""


def normalise_name(name: str) -> str:
    """Lower case, ``_``/``-``/``/`` as spaces, other punctuation dropped, spaces collapsed."""
    name = re.sub(r"[_\-/]", " ", name.lower())
    name = re.sub(r"[^\w\s]", "", name)
    return " ".join(name.split())


def descriptions_path(dataset: str, descriptions: str, descriptions_dir: str, shipped: Path | None) -> Path | None:
    """The CuPL file of ``dataset``: ``descriptions`` if given, else ``descriptions_dir`` / its CuPL
    name (standard datasets), else the file the dataset folder ships (``shipped``), else None."""
    if descriptions:
        return Path(descriptions).expanduser()
    if descriptions_dir and dataset in CUPL_FILES:
        return Path(descriptions_dir).expanduser() / CUPL_FILES[dataset]
    return shipped


def load_descriptions(path: str | Path, classnames: list[str], n_descriptions: int) -> list[list[str]]:
    """The first ``n_descriptions`` sentences of each class, by class index.

    Args:
        path: CuPL JSON file.
        classnames: C class names in label order.
        n_descriptions: sentences kept per class (SPEC: 10; 5 for ImageNet).

    Returns:
        C lists of exactly ``n_descriptions`` sentences.

    Raises:
        DataError: missing/malformed file, a class with no entry or too few sentences,
            or a repeated class name whose count differs from the file's (the first such class).
    """
    out, faults = _assign(Path(path), classnames, n_descriptions)
    if faults:
        raise DataError(faults[0])
    empty = [classnames[i] for i, sentences in enumerate(out) if not any(s.strip() for s in sentences)]
    if empty:  # Stage I would fit the anchors to the encoding of "" for these classes
        warnings.warn(f"descriptions file {path}: {len(empty)} class(es) have only empty descriptions, so their "
                      f"Stage I target carries no class information: {', '.join(empty[:EXAMPLES])}"
                      + (", ..." if len(empty) > EXAMPLES else ""), stacklevel=2)
    return out


def description_faults(path: str | Path, classnames: list[str], n_descriptions: int) -> list[str]:
    """Every class :func:`load_descriptions` would refuse, one line each (empty: full coverage).

    Raises:
        DataError: missing or malformed file."""
    return _assign(Path(path), classnames, n_descriptions)[1]


def _assign(path: Path, classnames: list[str], n_descriptions: int) -> tuple[list[list[str]], list[str]]:
    text = read_text(path, "descriptions file", DataError)
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise DataError(f"descriptions file {path} is not valid JSON: {err}") from None
    if not isinstance(pairs, _Pairs):
        raise DataError(f"descriptions file {path} must be a JSON object of class name -> sentences, "
                        f"not a {type(pairs).__name__}")
    if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for _, v in pairs):
        raise DataError(f"descriptions file {path} must map class names to lists of sentences")
    entries: dict[str, list[list[str]]] = defaultdict(list)
    for name, sentences in pairs:
        entries[normalise_name(name)].append(sentences)
    wanted: dict[str, list[int]] = defaultdict(list)
    for idx, name in enumerate(classnames):
        wanted[normalise_name(name)].append(idx)
    out: list[list[str]] = [[] for _ in classnames]
    faults = []
    for key, indices in wanted.items():
        found = entries.get(key, [])
        if not found:
            faults.append(f"descriptions file {path} has no entry for class '{classnames[indices[0]]}' "
                          f"(index {indices[0]})")
            continue
        if len(found) != len(indices):
            faults.append(f"descriptions file {path}: class name '{classnames[indices[0]]}' is used by "
                          f"{len(indices)} classes (indices {indices}) but has {len(found)} entries; "
                          f"give one entry per class")
            continue
        for idx, sentences in zip(indices, found):
            if len(sentences) < n_descriptions:
                faults.append(f"descriptions file {path}: class '{classnames[idx]}' has {len(sentences)} "
                              f"sentences, fewer than n_descriptions={n_descriptions}")
            out[idx] = [str(s) for s in sentences[:n_descriptions]]
    return out, faults
