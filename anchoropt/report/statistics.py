"""Statistics over result records: seed statistics per cell, all-dataset averages, paired tests,
Friedman / Nemenyi ranks, best-so-far search curves, missing cells. Accuracies and HM in percent."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import scipy
from scipy import stats
from statsmodels.stats.multitest import multipletests

from anchoropt.errors import brief
from anchoropt.metrics import harmonic_mean
from anchoropt.records import ANCHOR_METRICS, KEY, METRICS

PRIMARY = {"base2novel": "hm", "cross_dataset": "acc"}  # the metric that is averaged and tested
ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
HISTORY_COLUMNS = ("schedule", "trial_number", "hm")
# per-dataset HM of a (method, dataset) cell over its seeds; the first is what papers tabulate
HM_CONVENTIONS = {
    "seed_averaged": "HM of the seed-averaged base and novel accuracies (the papers' convention: "
                     "CoOp, CoCoOp, MaPLe, AnchorOPT)",
    "per_seed_mean": "mean over seeds of each run's HM (never above the papers' convention)",
}
DEFAULT_HM_CONVENTION = "seed_averaged"
# a per-seed difference whose spread is below this (points) is rounding noise, not variance
ZERO_VARIANCE_TOL = 1e-9
WILCOXON_EXACT_MAX_N = 50  # scipy's own limit for the exact null distribution without ties
WILCOXON_PERMUTATION_MAX_N = 13  # all 2^n sign flips with tied |differences| (scipy's "auto" limit)


def complete_runs(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """``df`` with every metric of ``metrics`` set to NaN in a run (row) that lacks any of them.

    The one missing-metric rule of the report: a run counts only when it has every metric of its
    protocol; a run with, say, ``acc_novel: null`` but an ``hm`` counts for none of them, so its
    cell is incomplete in every table, average and test alike."""
    out = df.copy()
    cols = list(metrics)
    out.loc[out[cols].isna().any(axis=1), cols] = math.nan
    return out


def cell_stats(df: pd.DataFrame, metrics: Sequence[str] = METRICS,
               hm_convention: str = DEFAULT_HM_CONVENTION) -> pd.DataFrame:
    """Seed statistics of every (method, dataset) cell of the full grid.

    ``df``: records (columns method, dataset, seed and ``metrics``, in percent); runs lacking
    one of ``metrics`` count for none (``complete_runs``).
    Returns one row per method x dataset (methods in order of appearance, datasets sorted) with
    n_records and, per metric, ``<metric>_n`` (seeds with a value), ``<metric>_mean`` and
    ``<metric>_std`` (sample std, ddof=1). Mean and std are NaN unless the cell has a value for
    every seed seen in ``df`` (nothing is averaged over a partial set of seeds).
    ``hm_convention`` (``HM_CONVENTIONS``) sets ``hm_mean`` when ``metrics`` holds hm:
    ``seed_averaged`` (default, as papers tabulate) = ``harmonic_mean(acc_base_mean,
    acc_novel_mean)`` with ``hm_std`` NaN (an HM of means has no seed spread); ``per_seed_mean``
    = mean and std of the runs' own HM. ValueError for an unknown convention.
    """
    if hm_convention not in HM_CONVENTIONS:
        raise ValueError(f"HM convention {brief(hm_convention)} unknown; expected one of {list(HM_CONVENTIONS)}")
    df = complete_runs(df, metrics)
    methods = methods_in_order(df)
    datasets, seeds = sorted(df["dataset"].unique()), sorted(df["seed"].unique())
    grid = pd.MultiIndex.from_product([methods, datasets, seeds], names=KEY)
    values = df.set_index(KEY)[list(metrics)].reindex(grid)
    groups = values.groupby(level=["method", "dataset"], sort=False)
    cell_index = pd.MultiIndex.from_product([methods, datasets], names=["method", "dataset"])
    sizes = df.groupby(["method", "dataset"]).size().reindex(cell_index, fill_value=0)
    out = pd.DataFrame({"n_records": sizes.astype(int)})
    counts, means, stds = groups.count(), groups.mean(), groups.std(ddof=1)
    for metric in metrics:
        complete = counts[metric] == len(seeds)
        out[f"{metric}_n"] = counts[metric]
        out[f"{metric}_mean"] = means[metric].where(complete)
        out[f"{metric}_std"] = stds[metric].where(complete)
    if "hm" in metrics and hm_convention == "seed_averaged":
        out["hm_mean"] = [harmonic_mean(b, n) for b, n in zip(out["acc_base_mean"], out["acc_novel_mean"])]
        out["hm_std"] = math.nan
    return out.reset_index()


def anchor_cell_stats(df: pd.DataFrame, protocol: str = "base2novel",
                      hm_convention: str = DEFAULT_HM_CONVENTION) -> pd.DataFrame:
    """``cell_stats`` of the anchor prompt's accuracy under the same rules, for the methods with
    an anchor prompt (a non-null ``acc_anchor_*`` in some record). Base-to-novel: records'
    ``acc_anchor_base`` / ``acc_anchor_novel`` as columns acc_base_*, acc_novel_*, hm_* (a run's
    anchor HM = ``harmonic_mean`` of its two); cross-dataset: ``acc_anchor`` as acc_*. Percent.
    Empty when no record has them."""
    names = ANCHOR_METRICS[protocol]
    if not set(names) <= set(df.columns):
        return pd.DataFrame()
    methods = set(df.loc[df[list(names)].notna().any(axis=1), "method"])
    if not methods:
        return pd.DataFrame()
    runs = df[df["method"].isin(methods)]
    if protocol == "cross_dataset":
        return cell_stats(runs.assign(acc=runs["acc_anchor"]), ("acc",))
    runs = runs.assign(acc_base=runs["acc_anchor_base"], acc_novel=runs["acc_anchor_novel"],
                       hm=[harmonic_mean(b, n) for b, n in zip(runs["acc_anchor_base"], runs["acc_anchor_novel"])])
    return cell_stats(runs, METRICS, hm_convention)


def methods_in_order(df: pd.DataFrame) -> list[str]:
    """Methods in order of first appearance (the default baseline is the first)."""
    return list(dict.fromkeys(df["method"]))


def metric_matrix(cells: pd.DataFrame, metric: str = "hm") -> pd.DataFrame:
    """Seed-averaged ``metric`` as a dataset x method table (NaN = missing cell)."""
    matrix = cells.pivot(index="dataset", columns="method", values=f"{metric}_mean")
    return matrix[list(dict.fromkeys(cells["method"]))]


def averages(cells: pd.DataFrame, datasets: Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """All-dataset averages per method over ``datasets`` (percent).

    Columns: n_datasets (len of ``datasets``), n_complete (datasets where the method has all
    ``metrics``), then for base-to-novel acc_base, acc_novel (means of the seed-averaged
    accuracies), hm_of_averages ("HM of averaged base and novel", as papers report:
    harmonic_mean of the two averages) and mean_hm ("mean of per-dataset HM"); for
    cross-dataset acc (mean accuracy). A method with a missing cell among ``datasets`` gets NaN
    (never an average over fewer datasets).
    """
    rows = {}
    for method, group in cells.groupby("method", sort=False):
        group = group[group["dataset"].isin(list(datasets))]
        mean = {m: group[f"{m}_mean"].mean(skipna=False) for m in metrics}
        complete = int(group[[f"{m}_mean" for m in metrics]].notna().all(axis=1).sum())
        row = {"n_datasets": len(group), "n_complete": complete}
        if "hm" in metrics:
            row.update(acc_base=mean["acc_base"], acc_novel=mean["acc_novel"],
                       hm_of_averages=harmonic_mean(mean["acc_base"], mean["acc_novel"]), mean_hm=mean["hm"])
        else:
            row.update(mean)
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def complete_datasets(cells: pd.DataFrame, methods: Sequence[str], metrics: Sequence[str] = METRICS) -> list[str]:
    """Datasets where every method in ``methods`` has all ``metrics`` for every seed."""
    sub = cells[cells["method"].isin(list(methods))]
    ok = sub[[f"{m}_mean" for m in metrics]].notna().all(axis=1).groupby(sub["dataset"]).all()
    return sorted(ok.index[ok])


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values (``statsmodels.stats.multitest.multipletests``,
    ``method="holm"``); NaN entries stay NaN and are not counted in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def wilcoxon_test(diffs: Sequence[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired differences (``scipy.stats.wilcoxon``).

    Zero differences are discarded before ranking (``zero_method="wilcox"``); n counts the
    nonzero ones. The p-value is exact from the null distribution of W when the nonzero
    ``|diffs|`` have no ties and n <= 50, exact over all 2^n sign flips
    (``scipy.stats.PermutationMethod``) when they are tied and n <= 13, else the tie-corrected
    normal approximation without continuity correction (scipy's own ``method="auto"`` rules,
    made explicit so the report can name them).
    Returns W, p, n_nonzero, p_method, and min_p: the smallest p reachable with these |diffs|
    (all of one sign; n = 5 without ties: 2/2^5 = 0.0625). W, p and min_p are NaN with no
    nonzero difference.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    out = {"wilcoxon_W": math.nan, "p": math.nan, "n_nonzero": int(d.size), "p_method": "", "min_p": math.nan}
    if d.size == 0:
        return out
    tied = np.unique(np.abs(d)).size < d.size
    if not tied and d.size <= WILCOXON_EXACT_MAX_N:
        method, name = "exact", "exact"
    elif tied and d.size <= WILCOXON_PERMUTATION_MAX_N:
        method, name = stats.PermutationMethod(n_resamples=np.inf), "exact (all sign flips; tied |Δ|)"
    else:
        method, name = "asymptotic", "normal approximation (tie-corrected)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d, zero_method="wilcox", method=method)
        best = stats.wilcoxon(np.abs(d), zero_method="wilcox", method=method)
    return out | {"wilcoxon_W": float(res.statistic), "p": float(res.pvalue), "p_method": name,
                  "min_p": float(best.pvalue)}


def wilcoxon_details(n: int | None = None) -> str:
    """How ``wilcoxon_test`` computes p, with the SciPy version, for report texts; ``n`` (the
    number of paired datasets) gives the smallest reachable p at that n, else an example at n = 5."""
    n_ex = n if n else 5
    return (f"`scipy.stats.wilcoxon` (SciPy {scipy.__version__}), two-sided, zero_method='wilcox' (zero "
            "differences discarded before ranking; n counts the nonzero ones); p exact from the null "
            f"distribution of W when the nonzero |Δ| have no ties and n ≤ {WILCOXON_EXACT_MAX_N}, exact over "
            f"all 2^n sign flips when tied and n ≤ {WILCOXON_PERMUTATION_MAX_N}, else the tie-corrected normal "
            "approximation without continuity correction. Smallest reachable p: the p with every Δ of one "
            f"sign ({'here ' if n else ''}n = {n_ex} without ties: 2/2^{n_ex} = {2 / 2 ** n_ex:.4g}); where it is "
            "not below the threshold, "
            "significance is out of reach at that n whatever the differences")


def bootstrap_ci(diffs: Sequence[float], seed: int = BOOTSTRAP_SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Bootstrap CI of the mean of ``diffs`` (``scipy.stats.bootstrap``, BCa, 9999 resamples,
    ``rng=numpy.random.default_rng(seed)``, so deterministic). (NaN, NaN) below 2 values;
    (d, d) when all values equal d (the resampling distribution is degenerate)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan, math.nan
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((d,), np.mean, confidence_level=confidence,
                              n_resamples=BOOTSTRAP_RESAMPLES, method="BCa",
                              rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_over_datasets(hm: pd.DataFrame, method: str, baseline: str) -> dict:
    """Paired comparison of ``method`` vs ``baseline`` over datasets on per-dataset HM.

    ``hm``: dataset x method table from ``metric_matrix`` (NaN = missing cell; such datasets
    are excluded and listed). Differences are method - baseline, in HM points (percent).
    Returns method, baseline, n_datasets, excluded (comma-separated), mean_diff, ci_low,
    ci_high (``bootstrap_ci``), the ``wilcoxon_test`` fields, and note (why a value is missing
    or degenerate).
    """
    used = hm[[baseline, method]].dropna()
    diffs = (used[method] - used[baseline]).to_numpy()
    test = wilcoxon_test(diffs)
    low, high = bootstrap_ci(diffs)
    note = ("no complete dataset: no test" if len(diffs) == 0 else
            "all differences zero: no test" if np.all(diffs == 0) else
            "one dataset: no CI" if len(diffs) == 1 else
            "all differences equal: CI degenerate" if _constant(diffs) else "")
    return {"method": method, "baseline": baseline, "n_datasets": len(used),
            "excluded": ", ".join(sorted(set(hm.index) - set(used.index))),
            "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
            "ci_low": low, "ci_high": high, **test, "note": note}


def win_tie_loss(matrix: pd.DataFrame, method: str, baseline: str) -> dict:
    """How many datasets ``method`` wins, ties and loses against ``baseline`` on ``matrix``
    (dataset x method, from ``metric_matrix``; datasets where either is missing are left out, as in
    ``compare_over_datasets``). A tie is a difference within float rounding (``ZERO_VARIANCE_TOL``
    points). Returns wins, ties, losses."""
    used = matrix[[baseline, method]].dropna()
    diffs = (used[method] - used[baseline]).to_numpy()
    tie = np.abs(diffs) <= ZERO_VARIANCE_TOL
    return {"wins": int(((diffs > 0) & ~tie).sum()), "ties": int(tie.sum()), "losses": int(((diffs < 0) & ~tie).sum())}


def _constant(d: np.ndarray) -> bool:
    """All values equal up to float rounding (e.g. 80.3 - 79.8 vs 70.5 - 70.0)."""
    return bool(np.ptp(d) <= ZERO_VARIANCE_TOL * max(1.0, float(np.max(np.abs(d)))))


def ttests_over_seeds(df: pd.DataFrame, cells: pd.DataFrame, method: str,
                      baseline: str, metric: str = "hm", metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per-dataset paired t-test over seeds of ``metric``, method vs baseline
    (``scipy.stats.ttest_rel``, pairs matched by seed, on each run's own value).
    ``df``: records (the ``complete_runs`` rule over ``metrics`` applies); ``cells``: ``cell_stats(df)``.
    One row per dataset: n_seeds, mean_diff (method - baseline, points), t, p, zero_variance,
    note. A difference that is the same on every seed (spread below ``ZERO_VARIANCE_TOL``) has
    zero variance: t would be infinite and p zero, which is no evidence, so t and p are NaN and
    zero_variance is True. Datasets where either cell is missing or incomplete get NaN and a
    note; no multiplicity correction."""
    hm = metric_matrix(cells, metric)
    runs = complete_runs(df, metrics)
    rows = []
    for dataset in hm.index:
        row = {"method": method, "baseline": baseline, "dataset": dataset, "n_seeds": 0,
               "mean_diff": math.nan, "t": math.nan, "p": math.nan, "zero_variance": False, "note": ""}
        if hm.loc[dataset, [method, baseline]].isna().any():
            row["note"] = "excluded: missing or incomplete cell"
        else:
            row.update(_seed_ttest(runs, dataset, method, baseline, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def _seed_ttest(df: pd.DataFrame, dataset: str, method: str, baseline: str, metric: str) -> dict:
    """ttest_rel of ``metric`` over the seeds of one dataset (method vs baseline)."""
    sub = df[df["dataset"] == dataset].pivot(index="seed", columns="method", values=metric)
    a, b = sub[method].to_numpy(), sub[baseline].to_numpy()
    d = a - b
    out = {"n_seeds": len(a), "mean_diff": float(np.mean(d))}
    if len(a) < 2:
        return out | {"note": "one seed: no test"}
    if np.all(d == 0):
        return out | {"note": "identical on every seed: no test"}
    if _constant(d):
        return out | {"zero_variance": True,
                      "note": f"zero variance: Δ = {np.mean(d):+.2f} on every seed; t undefined, not evidence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(a, b)
    return out | {"t": float(res.statistic), "p": float(res.pvalue)}


def average_ranks(hm: pd.DataFrame) -> pd.Series:
    """Mean rank per method over datasets (rows) of ``hm`` (no NaN); rank 1 = highest HM, ties
    get the average rank (``DataFrame.rank(method="average")``)."""
    return hm.rank(axis=1, ascending=False, method="average").mean().rename("average_rank")


def friedman_test(hm: pd.DataFrame) -> tuple[float, float]:
    """Friedman chi-square over datasets (rows, no NaN) and methods (columns, >= 3), with tie
    correction (``scipy.stats.friedmanchisquare``). Returns (statistic, p); (NaN, NaN) when every
    dataset ties all methods (the tie correction divides by zero: nothing to test)."""
    if (hm.nunique(axis=1) == 1).all():
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.friedmanchisquare(*(hm[c].to_numpy() for c in hm.columns))
    return float(res.statistic), float(res.pvalue)


def nemenyi(hm: pd.DataFrame) -> pd.DataFrame:
    """Nemenyi post-hoc p-values, method x method
    (``scikit_posthocs.posthoc_nemenyi_friedman`` on the dataset x method block matrix)."""
    p = pd.DataFrame(np.asarray(posthocs().posthoc_nemenyi_friedman(hm.to_numpy()), dtype=float),
                     index=hm.columns, columns=hm.columns)
    return p.rename_axis(index="method", columns=None)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks, q_alpha * sqrt(k (k + 1) / (6 n)), with
    q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2) (Demsar 2006, Table 5)."""
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6.0 * n)))


def best_so_far(histories: pd.DataFrame) -> pd.DataFrame:
    """Best HM reached against trials spent, per schedule.

    ``histories``: columns schedule, trial_number, hm (percent; NaN = failed/pruned trial, which
    still counts as spent). Returns schedule, trial_number, trials_spent (1-based count in
    trial_number order), hm, best_hm (running maximum, NaN until a trial has a value).
    Raises ValueError on missing columns or a repeated (schedule, trial_number).
    """
    missing = [c for c in HISTORY_COLUMNS if c not in histories.columns]
    if missing:
        raise ValueError(
            f"search_histories lacks column(s) {missing}; needs {list(HISTORY_COLUMNS)}")
    h = histories[list(HISTORY_COLUMNS)].copy()
    if h.duplicated(["schedule", "trial_number"]).any():
        raise ValueError("search_histories repeats a (schedule, trial_number)")
    h["hm"] = h["hm"].astype(float)
    h = h.sort_values(["schedule", "trial_number"], kind="stable").reset_index(drop=True)
    groups = h.groupby("schedule", sort=False)
    h.insert(2, "trials_spent", groups.cumcount() + 1)
    running = h["hm"].fillna(-np.inf).groupby(h["schedule"], sort=False).cummax()
    h["best_hm"] = running.replace(-np.inf, np.nan)
    return h


def missing_cells(cells: pd.DataFrame, df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """(method, dataset) cells lacking a value for some seed or metric.

    ``cells``: ``cell_stats(df)``; ``df``: records. Columns method, dataset, status ("absent":
    no record; "incomplete": some seeds or metric values missing), seeds_present,
    seeds_missing, null_metrics (metrics null in some present record), seeds_incomplete (seeds
    whose run lacks a metric and so counts as missing, ``complete_runs``).
    """
    seeds = sorted(df["seed"].unique())
    incomplete = cells[[f"{m}_mean" for m in metrics]].isna().any(axis=1)
    rows = []
    for cell in cells[incomplete].itertuples():
        recs = df[(df["method"] == cell.method) & (df["dataset"] == cell.dataset)]
        present = sorted(recs["seed"])
        rows.append({"method": cell.method, "dataset": cell.dataset,
                     "status": "absent" if recs.empty else "incomplete",
                     "seeds_present": " ".join(map(str, present)),
                     "seeds_missing": " ".join(str(s) for s in seeds if s not in present),
                     "null_metrics": " ".join(m for m in metrics if recs[m].isna().any()),
                     "seeds_incomplete": " ".join(str(s) for s in sorted(recs.loc[recs[list(metrics)].isna()
                                                                                    .any(axis=1), "seed"]))})
    return pd.DataFrame(rows, columns=["method", "dataset", "status", "seeds_present",
                                       "seeds_missing", "null_metrics", "seeds_incomplete"])


def posthocs():
    import scikit_posthocs
    return scikit_posthocs
