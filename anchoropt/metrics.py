"""Base-to-novel metrics (SPEC section 8)."""
from __future__ import annotations

import math


def harmonic_mean(base: float, novel: float) -> float:
    """``HM = 2 * base * novel / (base + novel)`` of two accuracies in percent.

    NaN if either is NaN; 0 if both are 0.
    """
    if math.isnan(base) or math.isnan(novel):
        return math.nan
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def hm_standard_error(base: float, novel: float, n_base: int, n_novel: int) -> float:
    """Standard error (points) of the HM of two accuracies (percent) measured on ``n_base`` and
    ``n_novel`` images, each image a Bernoulli trial: the delta method on ``harmonic_mean`` with
    the binomial variances ``p (1 - p) / n`` (Casella & Berger, Statistical Inference, 5.5.4).
    It counts image sampling only (not seeds or class choice); NaN when a set is empty."""
    if n_base <= 0 or n_novel <= 0 or math.isnan(base) or math.isnan(novel) or base + novel == 0:
        return math.nan
    b, n = base / 100.0, novel / 100.0
    d_b, d_n = 2 * n * n / (b + n) ** 2, 2 * b * b / (b + n) ** 2  # partial derivatives of 2bn/(b+n)
    var = d_b ** 2 * b * (1 - b) / n_base + d_n ** 2 * n * (1 - n) / n_novel
    return 100.0 * math.sqrt(var)


def pool_scores(results: list[dict], distinct: tuple[int, int] | None = None) -> dict:
    """Base-to-novel scores of one configuration over several runs that each scored their own
    images (``Trainer.evaluate(per_image=True)`` of each run): accuracies and HM over all images
    pooled, ``n_base`` / ``n_novel`` images scored, ``hm_se`` (:func:`hm_standard_error` with the
    numbers of ``distinct`` (base, novel) images when given: an image scored by several runs is
    one draw of the image population, not several),
    ``correct_base`` / ``correct_novel`` as strings of ``0``/``1`` (run by run, images in order) and
    every other metric averaged over the runs."""
    correct = {k: [bool(v) for r in results for v in r[f"correct_{k}"].tolist()] for k in ("base", "novel")}
    out = {k: sum(r[k] for r in results) / len(results) for k in results[0]
           if not k.startswith("correct_") and k != "hm"}
    for k, right in correct.items():
        if len(results) > 1:  # one run keeps its evaluator's accuracy as it was
            out[f"acc_{k}"] = 100.0 * sum(right) / len(right) if right else math.nan
        out[f"n_{k}"] = len(right)
        out[f"correct_{k}"] = "".join("1" if v else "0" for v in right)
    out["hm"] = harmonic_mean(out["acc_base"], out["acc_novel"]) if len(results) > 1 else results[0]["hm"]
    n_base, n_novel = distinct or (out["n_base"], out["n_novel"])
    out["hm_se"] = hm_standard_error(out["acc_base"], out["acc_novel"], n_base, n_novel)
    return out
