"""Significance reports over benchmark result records.

Inputs are the JSON result records of ``docs/INTERFACES.md`` (one per method, dataset and seed);
accuracies and HM are in percent throughout. One report covers one protocol (SPEC section 8):
base-to-novel records are compared on HM, cross-dataset records on the accuracy of the target
datasets (the source dataset is shown but enters no average and no test). ``load_records``
turns them into a table and ``write_report`` writes ``report.md``, ``tables.tex``, one CSV per table and PNG figures.

Statistics (SPEC section 8 for the metrics):

* HM of one run: ``2 * base * novel / (base + novel)``, read from the record's ``metrics.hm``.
* Per (method, dataset) cell: mean and sample standard deviation (``ddof=1``) over seeds.
* Two all-dataset averages, always labelled: the "HM of averaged base and novel" (as papers
  report) and the "mean of per-dataset HM"; cross-dataset: the mean target accuracy.
* Against a baseline: paired Wilcoxon signed-rank test over datasets on seed-averaged HM (or target accuracy)
  (``scipy.stats.wilcoxon``) with Holm's step-down correction across the comparisons
  (``statsmodels.stats.multitest.multipletests(method="holm")``); paired t-test over seeds per dataset (``scipy.stats.ttest_rel``); 95% bootstrap
  confidence interval of the mean HM difference over datasets (``scipy.stats.bootstrap``, BCa,
  fixed seed).
* Three or more methods: Friedman test (``scipy.stats.friedmanchisquare``), Nemenyi post-hoc
  (``scikit_posthocs.posthoc_nemenyi_friedman``), critical difference
  ``q_alpha * sqrt(k (k + 1) / (6 N))`` (Demsar 2006, q_alpha from
  ``scipy.stats.studentized_range``) and a CD diagram
  (``scikit_posthocs.critical_difference_diagram``); rank 1 = highest HM.

Missing data are never filled: a (method, dataset) cell needs a non-null value for every seed
seen anywhere in the records, otherwise it is shown as missing and listed in "Missing cells";
tests over datasets use only the datasets where all compared methods are complete.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from anchoropt.metrics import harmonic_mean

PROTOCOL_METRICS = {"base2novel": ("acc_base", "acc_novel", "hm"), "cross_dataset": ("acc",)}
METRICS = PROTOCOL_METRICS["base2novel"]
ALL_METRICS = tuple(dict.fromkeys(m for ms in PROTOCOL_METRICS.values() for m in ms))
PRIMARY = {"base2novel": "hm", "cross_dataset": "acc"}  # the metric that is averaged and tested
METRIC_TITLES = {"acc_base": "Base accuracy", "acc_novel": "Novel accuracy", "hm": "HM", "acc": "Accuracy"}
KEY = ["method", "dataset", "seed"]
RECORD_COLUMNS = [*KEY, *ALL_METRICS, "objective", "scored_on", "protocol", "role", "path"]
ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
MISSING = "—"
HISTORY_COLUMNS = ("schedule", "trial_number", "hm")


# --------------------------------------------------------------------------- loading records

def load_records(paths: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """Read every result record under ``paths`` (files, or folders searched recursively for
    ``*.json``) into one row per record.

    Returns columns method, dataset, seed (int), acc_base, acc_novel, hm (base2novel) and acc
    (cross_dataset) (float percent, NaN where the record has null or no value or the metric
    belongs to the other protocol), objective (what tuned the config), scored_on (``test`` or
    the leak-free ``val`` split), protocol (``base2novel`` when the record has none), role
    (cross_dataset: ``source`` or ``target``) and path (the file), sorted by method, dataset, seed.
    Raises FileNotFoundError for a path that does not exist; ValueError (one line naming the
    file) for a malformed record, naming both files for a duplicated (method, dataset, seed),
    naming one file of each kind when records of different splits or protocols are mixed, and
    when no record is found.
    """
    files = _record_files(paths)
    if not files:
        raise ValueError(f"no *.json result records found under {_paths_text(paths)}")
    df = pd.DataFrame([_read_record(f) for f in files], columns=RECORD_COLUMNS)
    _check_duplicates(df)
    _check_one_kind(df, "scored_on", "test", "scored on different splits")
    _check_one_kind(df, "protocol", "base2novel", "of different protocols")
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def _as_path_list(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """A single path or an iterable of paths, as a list of Path."""
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _paths_text(paths: Path | str | Iterable[Path | str]) -> str:
    return ", ".join(str(p) for p in _as_path_list(paths))


def _record_files(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """Record files under ``paths`` in a stable order, each file once."""
    found: dict[Path, Path] = {}
    for path in _as_path_list(paths):
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*.json") if p.is_file())
        elif path.is_file():
            candidates = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return list(found.values())


def _read_record(path: Path) -> dict:
    """One record file as a row dict; ValueError naming the file if it is malformed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        row = _record_row(record)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{path}: malformed result record: {reason}") from None
    row["path"] = str(path)
    return row


def _record_row(record: object) -> dict:
    """Validate a parsed record (INTERFACES.md, record_version 1) and pick the report fields."""
    if not isinstance(record, dict):
        raise ValueError("top level is not a JSON object")
    if record.get("record_version") != 1:
        raise ValueError(f"record_version is {record.get('record_version')!r}, expected 1")
    row = {"method": _text_field(record, "method"), "dataset": _text_field(record, "dataset")}
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' is {seed!r}, expected an integer")
    row["seed"] = seed
    for name in ("objective", "scored_on", "role"):
        value = record.get(name)
        row[name] = None if value is None else str(value)
    row["protocol"] = str(record.get("protocol") or "base2novel")
    if row["protocol"] not in PROTOCOL_METRICS:
        raise ValueError(f"protocol is {row['protocol']!r}, expected one of {list(PROTOCOL_METRICS)}")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is missing or not an object")
    row.update({name: math.nan for name in ALL_METRICS})
    row.update({name: _metric_value(metrics, name) for name in PROTOCOL_METRICS[row["protocol"]]})
    return row


def _text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} is {value!r}, expected a non-empty string")
    return value


def _metric_value(metrics: dict, name: str) -> float:
    """A percent metric: a number in [0, 100], or NaN for null / absent / NaN."""
    value = metrics.get(name)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics.{name} is {value!r}, expected a number or null")
    if math.isnan(value):
        return math.nan
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"metrics.{name} is {value!r}, expected a percentage in [0, 100]")
    return float(value)


def _check_one_kind(df: pd.DataFrame, column: str, default: str, what: str) -> None:
    """Accuracies on test and on the small val split, or of different protocols, are not
    comparable: never mix them (ValueError naming one file of each kind; a missing value counts
    as ``default``)."""
    kinds = df.groupby(df[column].fillna(default))["path"].first()
    if len(kinds) > 1:
        found = ", ".join(f"{kind} ({path})" for kind, path in kinds.items())
        raise ValueError(f"records {what} cannot share a report: {found}")


def protocol_of(df: pd.DataFrame) -> str:
    """The one protocol of the records (``base2novel`` when none is recorded)."""
    found = set(df["protocol"].dropna()) if "protocol" in df.columns else set()
    if len(found) > 1:
        raise ValueError(f"records of different protocols cannot share a report: {sorted(found)}")
    return found.pop() if found else "base2novel"


def _check_duplicates(df: pd.DataFrame) -> None:
    """ValueError naming both files of the first duplicated (method, dataset, seed)."""
    dup = df[df.duplicated(KEY, keep=False)]
    if dup.empty:
        return
    first = dup.sort_values(KEY, kind="stable").head(2)
    method, dataset, seed = first.iloc[0][KEY]
    where = " and ".join(str(p) for p in first.get("path", pd.Series(["<no path>"] * 2)))
    raise ValueError(
        f"duplicate result record for method={method!r} dataset={dataset!r} seed={seed}: {where}")


# --------------------------------------------------------------------------- statistics

def cell_stats(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Seed statistics of every (method, dataset) cell of the full grid.

    ``df``: records (columns method, dataset, seed and ``metrics``, in percent).
    Returns one row per method x dataset (methods in order of appearance, datasets sorted) with
    n_records and, per metric, ``<metric>_n`` (seeds with a value), ``<metric>_mean`` and
    ``<metric>_std`` (sample std, ddof=1). Mean and std are NaN unless the cell has a value for
    every seed seen in ``df`` (nothing is averaged over a partial set of seeds).
    """
    methods = _methods(df)
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


def _methods(df: pd.DataFrame) -> list[str]:
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
    p = pd.DataFrame(np.asarray(_posthocs().posthoc_nemenyi_friedman(hm.to_numpy()), dtype=float),
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


def _posthocs():
    import scikit_posthocs
    return scikit_posthocs


# --------------------------------------------------------------------------- formatting

def _num(x: float, digits: int = 2) -> str:
    return MISSING if x is None or pd.isna(x) else f"{x:.{digits}f}"


def _pval(p: float) -> str:
    if p is None or pd.isna(p):
        return MISSING
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _md_table(table: pd.DataFrame) -> str:
    """A DataFrame of strings (index ignored) as a GitHub markdown table."""
    cells = [[str(c) for c in table.columns]] + [[str(v) for v in r] for r in table.to_numpy()]
    lines = ["| " + " | ".join(r).replace("\n", " ") + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


def _mean_std(mean: float, std: float, n: int, n_expected: int) -> str:
    if pd.isna(mean):
        return MISSING if n == 0 else f"{MISSING} ({n}/{n_expected} seeds)"
    return _num(mean) if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _latex_escape(text: str) -> str:
    """Escape LaTeX special characters in a method or dataset name."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


# --------------------------------------------------------------------------- report

@dataclass
class _Context:
    """What every report section needs: the records, their cell statistics and the output dir."""
    df: pd.DataFrame
    cells: pd.DataFrame
    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    baseline: str
    out_dir: Path
    protocol: str
    source: str | None  # cross_dataset: the trained dataset, shown but not averaged or tested

    @property
    def metrics(self) -> tuple[str, ...]:
        return PROTOCOL_METRICS[self.protocol]

    @property
    def primary(self) -> str:
        return PRIMARY[self.protocol]

    @property
    def label(self) -> str:
        """What the tests compare, for section texts."""
        return "HM" if self.protocol == "base2novel" else "target accuracy"

    @property
    def scored(self) -> list[str]:
        """Datasets that enter averages and tests (all but the cross-dataset source)."""
        return [d for d in self.datasets if d != self.source]

    @property
    def primary_matrix(self) -> pd.DataFrame:
        """Seed-averaged primary metric (HM, or target accuracy), scored dataset x method."""
        return metric_matrix(self.cells, self.primary).loc[self.scored]

    def csv(self, table: pd.DataFrame, name: str, index: bool = False) -> str:
        """Write ``table`` to ``out_dir/name`` and return a markdown note pointing to it."""
        table.to_csv(self.out_dir / name, index=index)
        return f"CSV: [`{name}`]({name})"


def write_report(df: pd.DataFrame, out_dir: Path | str, baseline: str | None = None,
                 search_histories: pd.DataFrame | None = None,
                 schedules: tuple[str, str] | None = None) -> Path:
    """Write report.md, tables.tex, CSV tables and PNG figures into ``out_dir`` (created).

    ``df``: records as from ``load_records`` (columns method, dataset, seed, and acc_base,
    acc_novel, hm or, cross-dataset, acc and role, in percent; objective, protocol, path
    optional). ``baseline``: method the others are tested against (default: the first method in ``df``). ``schedules``: (one_stage_method,
    two_stage_method) for the one-stage vs two-stage section. ``search_histories``: columns
    schedule, trial_number, hm (see ``best_so_far``). Returns the path of report.md.
    Raises ValueError for an empty ``df``, missing columns, duplicated (method, dataset, seed),
    mixed protocols, cross-dataset records without exactly one source dataset, or a baseline /
    schedule method that is not in ``df``.
    """
    ctx = _context(df, Path(out_dir), baseline)
    if schedules is not None:
        _check_methods(ctx, schedules, "schedules")
    if search_histories is not None:
        best_so_far(search_histories)  # raises before any file is written
    sections = [_header(ctx), _per_dataset_section(ctx), _averages_section(ctx),
                _paired_section(ctx), _friedman_section(ctx),
                _schedule_section(ctx, schedules, search_histories), _missing_section(ctx)]
    (ctx.out_dir / "tables.tex").write_text(_latex_tables(ctx), encoding="utf-8")
    report = ctx.out_dir / "report.md"
    report.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return report


def _context(df: pd.DataFrame, out_dir: Path, baseline: str | None) -> _Context:
    """Validate the records and compute the shared cell statistics."""
    if df.empty:
        raise ValueError("no result records to report on")
    protocol = protocol_of(df)
    missing = [c for c in (*KEY, *PROTOCOL_METRICS[protocol]) if c not in df.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}")
    _check_duplicates(df)
    source = _source_dataset(df) if protocol == "cross_dataset" else None
    methods = _methods(df)
    datasets = sorted(df["dataset"].unique(), key=lambda d: (d != source, d))
    ctx = _Context(df=df, cells=cell_stats(df, PROTOCOL_METRICS[protocol]), methods=methods,
                   datasets=datasets, seeds=sorted(df["seed"].unique()),
                   baseline=baseline if baseline is not None else methods[0], out_dir=out_dir,
                   protocol=protocol, source=source)
    _check_methods(ctx, [ctx.baseline], "baseline")
    out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _source_dataset(df: pd.DataFrame) -> str:
    """The source dataset of cross-dataset records (ValueError unless exactly one)."""
    sources = sorted(set(df.loc[df.get("role", pd.Series(dtype=object)) == "source", "dataset"]))
    if len(sources) != 1:
        raise ValueError(f"cross-dataset records need exactly one source dataset (role 'source'), found {sources}")
    return sources[0]


def _check_methods(ctx: _Context, names: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in ctx.methods]
    if unknown:
        raise ValueError(f"{what}: method(s) {unknown} not in the records ({ctx.methods})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: needs two different methods, got {list(names)}")


def _header(ctx: _Context) -> str:
    """Title and what the records are: methods, datasets, seeds, protocol, objective."""
    def values(col: str, sub: pd.DataFrame) -> str:
        if col not in sub.columns:
            return "not recorded"
        return ", ".join(sorted({str(v) for v in sub[col] if v is not None})) or "not recorded"
    protocol = (f"Protocol: {ctx.protocol}." if ctx.source is None else
                f"Protocol: cross_dataset: trained on every class of **{ctx.source}** (the source), scored on all "
                f"classes of the source and of {len(ctx.scored)} target datasets; averages and tests use the "
                "targets only.")
    lines = ["# Significance report", "",
             f"{len(ctx.df)} result records: {len(ctx.methods)} methods, {len(ctx.datasets)} "
             f"datasets, seeds {', '.join(map(str, ctx.seeds))}. Accuracies and HM in percent; "
             "cells are mean ± sample std (ddof=1) over seeds.", "",
             protocol, "", "Tuning objective per method:", ""]
    lines += [f"- {m}: {values('objective', ctx.df[ctx.df['method'] == m])}" for m in ctx.methods]
    return "\n".join(lines)


def _per_dataset_section(ctx: _Context) -> str:
    """Per-dataset mean ± std tables, one per metric, datasets as rows and methods as columns."""
    parts = ["## Per-dataset results", "",
             f"{MISSING} marks a missing cell; `{MISSING} (n/N seeds)` a cell with values for "
             "only n of the N seeds (not averaged; see Missing cells)."]
    for metric in ctx.metrics:
        parts += ["", f"### {METRIC_TITLES[metric]} (%)", "",
                  _md_table(_display_table(ctx, metric))]
    parts += ["", ctx.csv(ctx.cells, "per_dataset.csv")]
    return "\n".join(parts)


def _display_table(ctx: _Context, metric: str) -> pd.DataFrame:
    """Dataset x method strings "mean ± std" for one metric."""
    table = pd.DataFrame({"dataset": [f"{d} (source)" if d == ctx.source else d for d in ctx.datasets]})
    for method in ctx.methods:
        cells = ctx.cells[ctx.cells["method"] == method].set_index("dataset")
        table[method] = [_mean_std(cells.at[d, f"{metric}_mean"], cells.at[d, f"{metric}_std"],
                                   cells.at[d, f"{metric}_n"], len(ctx.seeds))
                         for d in ctx.datasets]
    return table


def _averages_section(ctx: _Context) -> str:
    """Averages over all datasets and, when some are incomplete, over the complete ones."""
    common = [d for d in complete_datasets(ctx.cells, ctx.methods, ctx.metrics) if d in ctx.scored]
    what = ("Two all-dataset averages of HM: **HM of averaged base and novel** = "
            "2·B·N/(B+N) of the average base B and novel N accuracies (as papers report), and "
            "**mean of per-dataset HM**." if ctx.source is None else
            f"Mean accuracy over the target datasets (the source, {ctx.source}, is left out).")
    parts = ["## Averages", "", what + " A method with a missing cell gets no average "
             f"({MISSING}) rather than one over fewer datasets."]
    kind = "datasets" if ctx.source is None else "target datasets"
    scopes = [("all", ctx.scored, f"### Over all {len(ctx.scored)} {kind}")]
    if len(common) < len(ctx.scored):
        scopes.append(("common", common, f"### Over the {len(common)} {kind} where every "
                       f"method is complete ({', '.join(common) or 'none'})"))
    tables = []
    for scope, datasets, title in scopes:
        avg = averages(ctx.cells, datasets, ctx.metrics)
        parts += ["", title, "", _md_table(_averages_display(avg))]
        tables.append(avg.reset_index().assign(scope=scope))
    parts += ["", ctx.csv(pd.concat(tables, ignore_index=True), "averages.csv")]
    return "\n".join(parts)


def _averages_display(avg: pd.DataFrame) -> pd.DataFrame:
    complete = [f"{c}/{n}" for c, n in zip(avg["n_complete"], avg["n_datasets"])]
    if "hm_of_averages" not in avg.columns:
        return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                             "mean target accuracy": avg["acc"].map(_num)})
    return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                         "base": avg["acc_base"].map(_num), "novel": avg["acc_novel"].map(_num),
                         "HM of averaged base and novel": avg["hm_of_averages"].map(_num),
                         "mean of per-dataset HM": avg["mean_hm"].map(_num)})


def _paired_section(ctx: _Context) -> str:
    """Wilcoxon + Holm + bootstrap over datasets and t-tests over seeds, each method vs baseline."""
    others = [m for m in ctx.methods if m != ctx.baseline]
    parts = [f"## Paired tests against {ctx.baseline}", ""]
    if not others:
        return "\n".join(parts + ["Only one method: nothing to compare."])
    summary = pd.DataFrame([compare_over_datasets(ctx.primary_matrix, m, ctx.baseline) for m in others])
    summary["p_holm"] = holm(summary["p"])
    parts += [f"Δ = method − baseline ({ctx.label} points). " + _pair_explanation(ctx, len(others)), "",
              _md_table(_pair_display(ctx, summary, holm_column=True)), "",
              *_exclusion_notes(summary), ctx.csv(summary, "paired_wilcoxon.csv"), "",
              "### Paired t-test over seeds per dataset", "",
              f"`scipy.stats.ttest_rel` on per-seed {ctx.label}, pairs matched by seed, two-sided, "
              f"no multiplicity correction. Δ = method − baseline ({ctx.label} points).", ""]
    ttests = pd.concat([_ttests(ctx, m, ctx.baseline) for m in others])
    parts += [_md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "paired_ttest.csv")]
    return "\n".join(parts)


def _ttests(ctx: _Context, method: str, baseline: str) -> pd.DataFrame:
    """``ttests_over_seeds`` on the primary metric of the scored datasets."""
    return ttests_over_seeds(ctx.df, ctx.cells[ctx.cells["dataset"].isin(ctx.scored)], method, baseline, ctx.primary)


def _pair_explanation(ctx: _Context, holm_family: int) -> str:
    text = (f"Over {'datasets' if ctx.source is None else 'target datasets'}, on seed-averaged {ctx.label}: "
            "two-sided Wilcoxon signed-rank test "
            "(`scipy.stats.wilcoxon`, zero differences discarded) and a "
            f"{CONFIDENCE:.0%} bootstrap CI of the mean difference (`scipy.stats.bootstrap`, BCa, "
            f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). Only datasets where both "
            "methods are complete are used.")
    if holm_family:
        text += (f" Wilcoxon p-values are Holm-corrected across the {holm_family} comparison(s)"
                 f" (significant: p (Holm) < {ALPHA}).")
    return text


def _pair_display(ctx: _Context, summary: pd.DataFrame, holm_column: bool) -> pd.DataFrame:
    table = pd.DataFrame({
        "method": summary["method"], "vs": summary["baseline"],
        "datasets used": summary["n_datasets"], f"mean Δ {ctx.label}": summary["mean_diff"].map(_num),
        f"{CONFIDENCE:.0%} CI": [f"[{_num(lo)}, {_num(hi)}]"
                                 for lo, hi in zip(summary["ci_low"], summary["ci_high"])],
        "Wilcoxon W": summary["wilcoxon_W"].map(lambda w: _num(w, 1)),
        "p": summary["p"].map(_pval)})
    if holm_column:
        table["p (Holm)"] = summary["p_holm"].map(_pval)
        table["significant"] = ["yes" if p < ALPHA else "no" if pd.notna(p) else MISSING
                                for p in summary["p_holm"]]
    return table


def _exclusion_notes(summary: pd.DataFrame) -> list[str]:
    notes = [f"- {r.method} vs {r.baseline}: {r.n_datasets} datasets used; excluded (missing "
             f"cell): {r.excluded or 'none'}." + (f" {r.note}." if r.note else "")
             for r in summary.itertuples()]
    return notes + [""]


def _ttest_display(ctx: _Context, ttests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"method": ttests["method"].to_numpy(),
                         "dataset": ttests["dataset"].to_numpy(),
                         "seeds": ttests["n_seeds"].to_numpy(),
                         f"mean Δ {ctx.label}": ttests["mean_diff"].map(_num).to_numpy(),
                         "t": ttests["t"].map(lambda t: _num(t, 3)).to_numpy(),
                         "p": ttests["p"].map(_pval).to_numpy(), "note": ttests["note"].to_numpy()})


def _friedman_section(ctx: _Context) -> str:
    """Friedman test, average ranks, Nemenyi p-values and the CD diagram (3+ methods)."""
    parts = ["## Friedman / Nemenyi", ""]
    if len(ctx.methods) < 3:
        return "\n".join(
            parts + [f"Needs three or more methods; the records have {len(ctx.methods)}."])
    hm = ctx.primary_matrix.dropna()
    excluded = sorted(set(ctx.scored) - set(hm.index))
    parts.append(f"On seed-averaged {ctx.label} over the {len(hm)} datasets where all {len(ctx.methods)} "
                 f"methods are complete; excluded: {', '.join(excluded) or 'none'}.")
    if len(hm) < 2:
        return "\n".join(parts + ["", "Fewer than two complete datasets: no test."])
    return "\n".join(parts + ["", *_friedman_parts(ctx, hm, excluded)])


def _friedman_parts(ctx: _Context, hm: pd.DataFrame, excluded: list[str]) -> list[str]:
    """Friedman / Nemenyi results on the complete dataset x method HM table ``hm``."""
    (k, n), (stat, p) = (len(hm.columns), len(hm)), friedman_test(hm)
    ranks, cd, pvals = average_ranks(hm), critical_difference(k, n), nemenyi(hm)
    summary = pd.DataFrame([{"statistic": stat, "p": p, "k": k, "n_datasets": n,
                             "critical_difference": cd, "excluded": ", ".join(excluded)}])
    return [f"Friedman χ² = {_num(stat, 3)}, p = {_pval(p)} (`scipy.stats.friedmanchisquare`, "
            f"tie-corrected), k = {k}, N = {n}. Nemenyi critical difference "
            f"(α = {ALPHA}) = {cd:.3f} rank.", "", ctx.csv(summary, "friedman.csv"), "",
            f"### Average ranks (1 = highest {ctx.label})", "",
            _md_table(pd.DataFrame({"method": ranks.index, "average rank": ranks.map(_num)})), "",
            ctx.csv(ranks.rename_axis("method").reset_index(), "average_ranks.csv"), "",
            "### Nemenyi p-values (`scikit_posthocs.posthoc_nemenyi_friedman`)", "",
            _md_table(pvals.map(_pval).reset_index()), "",
            ctx.csv(pvals, "nemenyi.csv", index=True), "",
            _plot_cd(ranks, pvals, cd, ctx.out_dir / "cd_diagram.png", ctx.label)]


def _plot_cd(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, path: Path, label: str) -> str:
    """CD diagram (``scikit_posthocs.critical_difference_diagram``) as PNG; markdown embed."""
    fig, ax = _figure((8.0, 1.5 + 0.35 * len(ranks)))
    _posthocs().critical_difference_diagram(ranks, pvalues, cd=cd, alpha=ALPHA, ax=ax)
    # the full rank scale 1..k, widened to hold the CD bar drawn from the best rank
    ax.set_xlim(min(1.0, ranks.min()), max(float(len(ranks)), ranks.min() + cd))
    ax.set_title(f"Average rank on {label} (1 = best); bars join methods not different (Nemenyi)",
                 fontsize=9, pad=36)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return f"![Critical difference diagram]({path.name})"


def _figure(size: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _schedule_section(ctx: _Context, schedules: tuple[str, str] | None,
                      histories: pd.DataFrame | None) -> str:
    """Paired tests two-stage vs one-stage, and best HM against trials spent per schedule."""
    parts = ["## One-stage vs two-stage", ""]
    if schedules is None and histories is None:
        return "\n".join(parts + ["Not requested (no `schedules` given)."])
    if schedules is not None:
        parts += _schedule_tests(ctx, *schedules)
    if histories is not None:
        parts += _history_parts(ctx, histories)
    return "\n".join(parts)


def _schedule_tests(ctx: _Context, one_stage: str, two_stage: str) -> list[str]:
    summary = pd.DataFrame([compare_over_datasets(ctx.primary_matrix, two_stage, one_stage)])
    ttests = _ttests(ctx, two_stage, one_stage)
    return [f"One-stage: **{one_stage}**; two-stage: **{two_stage}**. "
            "Δ = two-stage − one-stage. " + _pair_explanation(ctx, holm_family=0)
            + " A single comparison: no correction.", "",
            _md_table(_pair_display(ctx, summary, holm_column=False)), "",
            *_exclusion_notes(summary), ctx.csv(summary, "schedule_wilcoxon.csv"), "",
            "### Paired t-test over seeds per dataset (two-stage vs one-stage)", "",
            _md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "schedule_ttest.csv"), ""]


def _history_parts(ctx: _Context, histories: pd.DataFrame) -> list[str]:
    best = best_so_far(histories)
    return ["### Best HM against trials spent", "",
            _md_table(_history_display(best)), "", ctx.csv(best, "search_history.csv"), "",
            _plot_history(best, ctx.out_dir / "search_history.png")]


def _history_display(best: pd.DataFrame, max_rows: int = 20) -> pd.DataFrame:
    """Best HM so far per schedule at up to ``max_rows`` trial counts (all in the CSV)."""
    wide = best.pivot(index="trials_spent", columns="schedule", values="best_hm")
    step = max(1, math.ceil(len(wide) / max_rows))
    shown = wide.iloc[sorted({0, *range(step - 1, len(wide), step), len(wide) - 1})]
    table = shown.map(_num).reset_index()
    return table.rename(columns={"trials_spent": "trials spent"})


def _plot_history(best: pd.DataFrame, path: Path) -> str:
    """Step plot of best HM against trials spent, one line per schedule; markdown embed."""
    fig, ax = _figure((6.0, 4.0))
    for schedule, group in best.groupby("schedule", sort=False):
        ax.step(group["trials_spent"], group["best_hm"], where="post", label=str(schedule))
    ax.set_xlabel("trials spent")
    ax.set_ylabel("best HM so far (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return f"![Best HM against trials spent]({path.name})"


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


def _missing_section(ctx: _Context) -> str:
    table = missing_cells(ctx.cells, ctx.df, ctx.metrics)
    total = len(ctx.methods) * len(ctx.datasets)
    parts = ["## Missing cells", "",
             f"{len(table)} of {total} (method, dataset) cells are missing or incomplete "
             f"(expected seeds: {', '.join(map(str, ctx.seeds))}). They are shown as {MISSING}, "
             "never filled, and each is left out of every test involving its method."]
    if len(table):
        parts += ["", _md_table(table)]
    parts += ["", ctx.csv(table, "missing_cells.csv")]
    return "\n".join(parts)


# --------------------------------------------------------------------------- LaTeX

def _latex_tables(ctx: _Context) -> str:
    """booktabs tables (methods x datasets, one per metric) with averages; best per column bold."""
    common = [d for d in complete_datasets(ctx.cells, ctx.methods, ctx.metrics) if d in ctx.scored]
    avg = averages(ctx.cells, common, ctx.metrics)
    kind = "datasets" if ctx.source is None else f"target datasets (source {ctx.source} excluded)"
    header = ["% Generated by anchoropt.report; needs \\usepackage{booktabs}.",
              f"% Averages over the {len(common)} {kind} where every method is complete."]
    tables = [_latex_table(ctx, m, avg, len(common)) for m in ctx.metrics]
    return "\n".join(header) + "\n\n" + "\n\n".join(tables) + "\n"


def _latex_table(ctx: _Context, metric: str, avg: pd.DataFrame, n_avg: int) -> str:
    means = metric_matrix(ctx.cells, metric).T.reindex(ctx.methods)
    stds = ctx.cells.pivot(index="method", columns="dataset", values=f"{metric}_std")
    columns = {(f"{d} (source)" if d == ctx.source else d): [(means.at[m, d], stds.at[m, d]) for m in ctx.methods]
               for d in ctx.datasets}
    avg_cols = ({f"HM of avg. ({n_avg})": "hm_of_averages", f"Mean HM ({n_avg})": "mean_hm"}
                if metric == "hm" else {f"Avg. ({n_avg})": metric})
    for label, col in avg_cols.items():
        columns[label] = [(avg[col].get(m, math.nan), math.nan) for m in ctx.methods]
    body = {label: _latex_column(vals) for label, vals in columns.items()}
    head = " & ".join(["Method", *(_latex_escape(c) for c in columns)]) + r" \\"
    rows = [" & ".join([_latex_escape(m), *(body[c][i] for c in columns)]) + r" \\"
            for i, m in enumerate(ctx.methods)]
    caption = (f"{METRIC_TITLES[metric]} (\\%), mean$\\pm$std over seeds "
               f"{', '.join(map(str, ctx.seeds))}; best per column in bold; "
               "-- marks a missing cell.")
    return "\n".join([r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
                      f"\\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule", head,
                      r"\midrule", *rows, r"\bottomrule", r"\end{tabular}", r"\end{table}"])


def _latex_column(values: list[tuple[float, float]]) -> list[str]:
    """Cells "mean$\\pm$std"; the best displayed mean(s) (ties included) in \\textbf."""
    shown = [round(m, 2) if pd.notna(m) else math.nan for m, _ in values]
    best = max((m for m in shown if pd.notna(m)), default=math.nan)
    out = []
    for (mean, std), rounded in zip(values, shown):
        if pd.isna(mean):
            out.append("--")
            continue
        text = f"{mean:.2f}"
        text = f"\\textbf{{{text}}}" if rounded == best else text
        out.append(text if pd.isna(std) else f"{text}$\\pm${std:.2f}")
    return out
