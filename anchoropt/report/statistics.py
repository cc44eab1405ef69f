"""Statistics over result records: seed statistics per cell, all-dataset averages, paired tests,
Friedman / Nemenyi ranks, best-so-far search curves, missing cells. Accuracies and HM in percent."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from anchoropt.metrics import harmonic_mean
from anchoropt.report.loading import KEY, METRICS

PRIMARY = {"base2novel": "hm", "cross_dataset": "acc"}  # the metric that is averaged and tested
ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
HISTORY_COLUMNS = ("schedule", "trial_number", "hm")


def cell_stats(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Seed statistics of every (method, dataset) cell of the full grid.

    ``df``: records (columns method, dataset, seed and ``metrics``, in percent).
    Returns one row per method x dataset (methods in order of appearance, datasets sorted) with
    n_records and, per metric, ``<metric>_n`` (seeds with a value), ``<metric>_mean`` and
    ``<metric>_std`` (sample std, ddof=1). Mean and std are NaN unless the cell has a value for
    every seed seen in ``df`` (nothing is averaged over a partial set of seeds).
    """
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
    return out.reset_index()


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


def wilcoxon_test(diffs: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences (``scipy.stats.wilcoxon``,
    zero differences discarded, exact p for small samples without ties).
    Returns (W, p); (NaN, NaN) with no differences or when all are zero."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or np.all(d == 0):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d)
    return float(res.statistic), float(res.pvalue)


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
    """Paired comparison of ``method`` vs ``baseline`` over datasets on seed-averaged HM.

    ``hm``: dataset x method table from ``metric_matrix`` (NaN = missing cell; such datasets
    are excluded and listed). Differences are method - baseline, in HM points (percent).
    Returns method, baseline, n_datasets, excluded (comma-separated), mean_diff, ci_low,
    ci_high (``bootstrap_ci``), wilcoxon_W and p (``wilcoxon_test``), note (why no test).
    """
    used = hm[[baseline, method]].dropna()
    diffs = (used[method] - used[baseline]).to_numpy()
    w, p = wilcoxon_test(diffs)
    low, high = bootstrap_ci(diffs)
    note = ("No complete dataset: no test" if len(diffs) == 0 else
            "All differences zero: no test" if np.all(diffs == 0) else "")
    return {"method": method, "baseline": baseline, "n_datasets": len(used),
            "excluded": ", ".join(sorted(set(hm.index) - set(used.index))),
            "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
            "ci_low": low, "ci_high": high, "wilcoxon_W": w, "p": p, "note": note}


def ttests_over_seeds(df: pd.DataFrame, cells: pd.DataFrame, method: str,
                      baseline: str, metric: str = "hm") -> pd.DataFrame:
    """Per-dataset paired t-test over seeds of ``metric``, method vs baseline
    (``scipy.stats.ttest_rel``, pairs matched by seed). ``df``: records; ``cells``: ``cell_stats(df)``.
    One row per dataset: n_seeds, mean_diff (method - baseline, points), t, p, note. Datasets
    where either cell is missing or incomplete get NaN and a note; no multiplicity correction."""
    hm = metric_matrix(cells, metric)
    rows = []
    for dataset in hm.index:
        row = {"method": method, "baseline": baseline, "dataset": dataset, "n_seeds": 0,
               "mean_diff": math.nan, "t": math.nan, "p": math.nan, "note": ""}
        if hm.loc[dataset, [method, baseline]].isna().any():
            row["note"] = "excluded: missing or incomplete cell"
        else:
            row.update(_seed_ttest(df, dataset, method, baseline, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def _seed_ttest(df: pd.DataFrame, dataset: str, method: str, baseline: str, metric: str) -> dict:
    """ttest_rel of ``metric`` over the seeds of one dataset (method vs baseline)."""
    sub = df[df["dataset"] == dataset].pivot(index="seed", columns="method", values=metric)
    a, b = sub[method].to_numpy(), sub[baseline].to_numpy()
    out = {"n_seeds": len(a), "mean_diff": float(np.mean(a - b))}
    if len(a) < 2:
        return out | {"note": "one seed: no test"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(a, b)
    note = "" if np.isfinite(res.pvalue) else "identical differences: no test"
    return out | {"t": float(res.statistic), "p": float(res.pvalue), "note": note}


def average_ranks(hm: pd.DataFrame) -> pd.Series:
    """Mean rank per method over datasets (rows) of ``hm`` (no NaN); rank 1 = highest HM, ties
    get the average rank (``DataFrame.rank(method="average")``)."""
    return hm.rank(axis=1, ascending=False, method="average").mean().rename("average_rank")


def friedman_test(hm: pd.DataFrame) -> tuple[float, float]:
    """Friedman chi-square over datasets (rows, no NaN) and methods (columns, >= 3), with tie
    correction (``scipy.stats.friedmanchisquare``). Returns (statistic, p)."""
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
    seeds_missing, null_metrics (metrics null in some present record).
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
                     "null_metrics": " ".join(m for m in metrics if recs[m].isna().any())})
    return pd.DataFrame(rows, columns=["method", "dataset", "status", "seeds_present",
                                       "seeds_missing", "null_metrics"])


def posthocs():
    import scikit_posthocs
    return scikit_posthocs
