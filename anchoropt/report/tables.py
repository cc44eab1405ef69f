"""Cell formatting, method display names and Markdown tables of a report."""
from __future__ import annotations

import re
from typing import Mapping

import pandas as pd

from anchoropt.escape import markdown

METRIC_TITLES = {"acc_base": "Base accuracy", "acc_novel": "Novel accuracy", "hm": "HM", "acc": "Accuracy"}
MISSING = "—"
# method-name tokens as the papers spell them; schedule / tuning tokens become a qualifier
METHOD_TOKENS = {"coop": "CoOp", "cocoop": "CoCoOp", "maple": "MaPLe", "kgcoop": "KgCoOp", "promptsrc": "PromptSRC",
                 "atprompt": "ATPrompt", "atp": "ATPrompt", "dept": "DePT", "anchoropt": "AnchorOPT", "zeroshot": "Zero-shot CLIP", "clip": "CLIP"}
# the 11 standard datasets (and ImageNet variants) as the papers' tables name them
DATASET_NAMES = {"imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
                 "stanford_cars": "StanfordCars", "oxford_flowers": "Flowers102", "food101": "Food101",
                 "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DTD", "eurosat": "EuroSAT",
                 "ucf101": "UCF101", "imagenetv2": "ImageNetV2", "imagenet_sketch": "ImageNet-Sketch",
                 "imagenet_a": "ImageNet-A", "imagenet_r": "ImageNet-R"}
QUALIFIERS = {"one_stage": "one-stage", "two_stage": "two-stage", "alternating": "alternating",
              "tuned": "tuned", "untuned": "untuned"}


def num(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` decimals, or ``MISSING`` for None / NaN."""
    return MISSING if x is None or pd.isna(x) else f"{x:.{digits}f}"


def pval(p: float) -> str:
    """A p-value to four decimals (``<0.0001`` below), or ``MISSING`` for None / NaN."""
    if p is None or pd.isna(p):
        return MISSING
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def md_table(table: pd.DataFrame) -> str:
    """A DataFrame of strings (index ignored) as a GitHub markdown table; every header and cell is literal
    text (``escape.markdown``: a name never becomes a tag, a link or a column boundary)."""
    cells = [[markdown(c) for c in table.columns]] + [[markdown(v) for v in r] for r in table.to_numpy()]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


def mean_std(mean: float, std: float, n: int, n_expected: int) -> str:
    """A cell as ``mean ± std`` (``mean`` alone when std is NaN); a missing cell ``MISSING``, or
    ``MISSING (n/N seeds)`` when only ``n`` of the ``n_expected`` seeds have complete runs."""
    if pd.isna(mean):
        return MISSING if n == 0 else f"{MISSING} ({n}/{n_expected} seeds)"
    return num(mean) if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def schedule_name(schedule: str) -> str:
    """How a paper prints a schedule: ``two_stage`` -> ``two-stage`` (other values unchanged)."""
    return QUALIFIERS.get(str(schedule), str(schedule))


def dataset_name(dataset: str) -> str:
    """How the papers' tables name a dataset (``oxford_flowers`` -> ``Flowers102``); others unchanged."""
    return DATASET_NAMES.get(dataset, dataset)


def display_name(method: str, overrides: Mapping[str, str] | None = None) -> str:
    """How a paper would print ``method``: ``overrides[method]`` if given, else known method
    tokens spelled as published (joined by ``+``), schedule / tuning tokens as a parenthesised
    qualifier, other tokens kept: ``coop_anchoropt_one_stage`` -> ``CoOp+AnchorOPT (one-stage)``,
    ``anchoropt_two_stage`` -> ``AnchorOPT (two-stage)``, ``zeroshot`` and ``zeroshot_clip`` ->
    ``Zero-shot CLIP`` (a token repeating the previous word's model is dropped)."""
    if overrides and method in overrides:
        return overrides[method]
    rest, qualifiers = method, []
    for token, text in QUALIFIERS.items():
        pattern = rf"(?:^|[_-]){token.replace('_', '[_-]')}(?=$|[_-])"
        if re.search(pattern, rest):
            qualifiers.append(text)
            rest = re.sub(pattern, "", rest)
    words: list[str] = []
    for token in (t for t in re.split(r"[_\-\s]+", rest) if t):
        known = METHOD_TOKENS.get(token.lower())
        if known and words and words[-1].endswith(known):
            continue
        if known and words and words[-1] in METHOD_TOKENS.values():
            words[-1] += "+" + known
        else:
            words.append(known or token)
    name = " ".join(words) or method
    return f"{name} ({', '.join(qualifiers)})" if qualifiers else name
