"""Tests of anchoropt.report against statistics computed by hand on small, fixed tables."""
import itertools
import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from anchoropt import report  # noqa: E402

SECTIONS = ["## Per-dataset results", "## Averages", "## Paired tests against ",
            "## Friedman / Nemenyi", "## One-stage vs two-stage", "## Missing cells"]


def _hm(base, novel):
    return 2 * base * novel / (base + novel)


def _record(method, dataset, seed, base, novel, hm="auto", **extra):
    hm = _hm(base, novel) if hm == "auto" else hm
    rec = {"record_version": 1, "method": method, "dataset": dataset, "seed": seed, "shots": 16,
           "protocol": "base2novel", "objective": "test",
           "metrics": {"acc_base": base, "acc_novel": novel, "hm": hm}}
    rec.update(extra)
    return rec


def _write(path, rec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec) if not isinstance(rec, str) else rec)
    return path


def _frame(hm_by_method, seeds=(1,)):
    """Records with base = novel = HM (so the HM of a run is that value), from
    {method: {dataset: value or [value per seed]}}."""
    rows = []
    for method, by_dataset in hm_by_method.items():
        for dataset, values in by_dataset.items():
            values = values if isinstance(values, list) else [values] * len(seeds)
            for seed, v in zip(seeds, values):
                rows.append({"method": method, "dataset": dataset, "seed": seed,
                             "acc_base": v, "acc_novel": v, "hm": v})
    return pd.DataFrame(rows)


def _section(text, heading):
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


# ------------------------------------------------------------------ load_records

def test_load_records_reads_files_and_folders_recursively(tmp_path):
    a = _write(tmp_path / "res" / "coop" / "dtd" / "s1.json", _record("coop", "dtd", 1, 80.0, 60.0))
    _write(tmp_path / "res" / "coop" / "dtd" / "s2.json", _record("coop", "dtd", 2, 82.0, 62.0))
    _write(tmp_path / "res" / "notes.txt", "not json, not read")
    other = _write(tmp_path / "x.json", {**_record("anchor", "dtd", 1, 81.0, 70.0, hm=None)})
    df = report.load_records([tmp_path / "res", a, str(other)])  # a is also under res/: read once
    assert list(df["method"]) == ["anchor", "coop", "coop"]
    assert list(df["seed"]) == [1, 1, 2]
    for col in ["method", "dataset", "seed", "acc_base", "acc_novel", "hm", "tuning",
                "protocol"]:
        assert col in df.columns
    assert df.loc[1, "hm"] == pytest.approx(_hm(80.0, 60.0))
    assert math.isnan(df.loc[0, "hm"])  # null metric -> NaN, not dropped
    assert df.loc[0, "tuning"] == "search_test" and df.loc[0, "protocol"] == "base2novel"  # a version-1 record


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps([1, 2]),
    json.dumps({k: v for k, v in _record("m", "d", 1, 80, 60).items() if k != "metrics"}),
    json.dumps(_record("m", "d", "one", 80, 60)),
    json.dumps(_record("m", "d", 1, 80, 60, hm="high")),
    json.dumps(_record("m", "d", 1, 0.8, 160.0)),
    json.dumps({k: v for k, v in _record("m", "d", 1, 80, 60).items() if k != "record_version"}),
    json.dumps(_record("", "d", 1, 80, 60)),
])
def test_malformed_record_is_one_line_error_naming_the_file(tmp_path, content):
    _write(tmp_path / "good.json", _record("m", "d", 2, 80, 60))
    bad = _write(tmp_path / "sub" / "bad_record.json", content)
    with pytest.raises(ValueError) as err:
        report.load_records([tmp_path])
    message = str(err.value)
    assert str(bad) in message and "\n" not in message


def test_duplicate_record_names_both_files(tmp_path):
    first = _write(tmp_path / "a" / "r.json", _record("coop", "dtd", 1, 80, 60))
    second = _write(tmp_path / "b" / "r.json", _record("coop", "dtd", 1, 81, 61))
    with pytest.raises(ValueError, match="duplicate") as err:
        report.load_records([tmp_path])
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_no_records_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="no \\*.json"):
        report.load_records([tmp_path])
    with pytest.raises(FileNotFoundError):
        report.load_records(tmp_path / "nowhere")


# ------------------------------------------------------------------ per-cell and averages

def test_cell_mean_and_sample_std_by_hand():
    df = _frame({"m": {"d": [70.0, 72.0, 77.0]}}, seeds=(1, 2, 3))
    cell = report.cell_stats(df).iloc[0]
    assert cell["hm_mean"] == pytest.approx(73.0)
    # sample std: deviations -3, -1, 4 -> (9 + 1 + 16) / (3 - 1) = 13
    assert cell["acc_base_std"] == pytest.approx(math.sqrt(13.0))
    assert math.isnan(cell["hm_std"])  # papers' HM of seed means: no seed spread
    per_seed = report.cell_stats(df, hm_convention="per_seed_mean").iloc[0]
    assert per_seed["hm_mean"] == pytest.approx(73.0)
    assert per_seed["hm_std"] == pytest.approx(math.sqrt(13.0))


def test_two_averages_by_hand(tmp_path):
    # d1: base 90, novel 50 -> HM 64.2857; d2: base 70, novel 70 -> HM 70.
    df = pd.DataFrame([
        {"method": "m", "dataset": "d1", "seed": 1, "acc_base": 90.0, "acc_novel": 50.0,
         "hm": 2 * 90 * 50 / 140},
        {"method": "m", "dataset": "d2", "seed": 1, "acc_base": 70.0, "acc_novel": 70.0,
         "hm": 70.0}])
    avg = report.averages(report.cell_stats(df), ["d1", "d2"]).loc["m"]
    assert avg["acc_base"] == pytest.approx(80.0)
    assert avg["acc_novel"] == pytest.approx(60.0)
    assert avg["hm_of_averages"] == pytest.approx(2 * 80 * 60 / 140)          # 68.5714
    assert avg["mean_hm"] == pytest.approx((2 * 90 * 50 / 140 + 70.0) / 2)  # 67.1429
    report.write_report(df, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "HM of averaged base and novel" in text and "mean of per-dataset HM" in text
    assert "| m | 2/2 | 80.00 | 60.00 | 68.57 | 67.14 |" in text
    csv = pd.read_csv(tmp_path / "averages.csv")
    assert csv.loc[0, "hm_of_averages"] == pytest.approx(68.5714, abs=1e-4)
    assert csv.loc[0, "mean_hm"] == pytest.approx(67.1429, abs=1e-4)


# ------------------------------------------------------------------ paired tests

DIFFS = [1.5, -0.5, 2.0, 3.1, -1.2, 0.7, 2.6, 4.0]  # distinct |d|, no zeros


def _exact_wilcoxon_p(diffs):
    """Two-sided exact p by enumerating all 2^n sign assignments of the ranks."""
    ranks = pd.Series(np.abs(diffs)).rank().to_numpy()
    w_plus = ranks[np.asarray(diffs) > 0].sum()
    total = ranks.sum()
    observed = min(w_plus, total - w_plus)
    extreme = 0
    for signs in itertools.product([0, 1], repeat=len(ranks)):
        w = float(np.dot(signs, ranks))
        extreme += min(w, total - w) <= observed + 1e-9
    return observed, extreme / 2 ** len(ranks)


def test_wilcoxon_matches_exact_enumeration(tmp_path):
    datasets = [f"d{i}" for i in range(len(DIFFS))]
    df = _frame({"base": dict.fromkeys(datasets, 60.0),
                 "new": {d: 60.0 + x for d, x in zip(datasets, DIFFS)}})
    w, p = _exact_wilcoxon_p(DIFFS)
    assert (w, p) == (4.0, 14 / 256)  # W- = 1 + 3; subsets of ranks summing to <= 4: 7, x2
    report.write_report(df, tmp_path, baseline="base")
    row = pd.read_csv(tmp_path / "paired_wilcoxon.csv").iloc[0]
    assert row["wilcoxon_W"] == pytest.approx(w)
    assert row["p"] == pytest.approx(p)
    assert row["n_datasets"] == 8
    assert row["mean_diff"] == pytest.approx(np.mean(DIFFS))


def test_all_zero_differences_give_no_test_and_say_so(tmp_path):
    df = _frame({"A": {"d1": 60.0, "d2": 70.0}, "B": {"d1": 60.0, "d2": 70.0}})
    text = report.write_report(df, tmp_path).read_text()
    row = pd.read_csv(tmp_path / "paired_wilcoxon.csv").iloc[0]
    assert math.isnan(row["p"]) and math.isnan(row["p_holm"])
    assert "all differences zero: no test" in _section(text, "## Paired tests against ")


def test_holm_against_hand_computation():
    # sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # 0.2*3 = 0.6, 0.5*2 = 1.0, 0.9 -> 1.0 (capped at 1, monotone)
    assert report.holm([0.5, 0.2, 0.9]) == pytest.approx([1.0, 0.6, 1.0])
    out = report.holm([0.01, float("nan"), 0.04])  # NaN stays NaN, family of 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_holm_applied_across_comparisons_in_report(tmp_path):
    rng = np.random.default_rng(3)
    datasets = [f"d{i}" for i in range(7)]
    table = {"base": {d: 60.0 for d in datasets}}
    for shift, name in [(0.3, "m1"), (1.0, "m2"), (3.0, "m3")]:
        table[name] = {d: 60.0 + shift + rng.normal(0, 1.0) for d in datasets}
    report.write_report(_frame(table), tmp_path, baseline="base")
    res = pd.read_csv(tmp_path / "paired_wilcoxon.csv").set_index("method")
    p = res["p"]
    order = p.sort_values().index
    m = len(p)
    by_hand, running = {}, 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[name]))
        by_hand[name] = running
    for name in p.index:
        assert res.loc[name, "p_holm"] == pytest.approx(by_hand[name])


def test_paired_ttest_over_seeds_by_hand(tmp_path):
    df = _frame({"base": {"d": [70.0, 71.0, 72.0]}, "new": {"d": [72.0, 72.5, 75.0]}},
                seeds=(1, 2, 3))
    report.write_report(df, tmp_path)
    row = pd.read_csv(tmp_path / "paired_ttest.csv").iloc[0]
    d = np.array([2.0, 1.5, 3.0])
    t = d.mean() / (math.sqrt(((d - d.mean()) ** 2).sum() / 2) / math.sqrt(3))
    p = 1 - t / math.sqrt(t * t + 2)  # two-sided p of Student's t with 2 degrees of freedom
    assert row["t"] == pytest.approx(t) and row["p"] == pytest.approx(p)
    assert row["mean_diff"] == pytest.approx(d.mean()) and row["n_seeds"] == 3


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    diffs = np.array(DIFFS)
    low, high = report.bootstrap_ci(diffs)
    assert low < diffs.mean() < high
    assert (low, high) == report.bootstrap_ci(diffs)
    assert high - low < diffs.max() - diffs.min()
    assert report.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(x) for x in report.bootstrap_ci([1.0]))


# ------------------------------------------------------------------ Friedman / Nemenyi

# HM per dataset for A, B, C; ranks (1 = highest) by hand on the right.
FRIEDMAN = {"d1": (70, 72, 68),   # A 2,   B 1,   C 3
            "d2": (65, 65, 60),   # A 1.5, B 1.5, C 3   (tie of 2)
            "d3": (80, 78, 79),   # A 1,   B 3,   C 2
            "d4": (50, 55, 55),   # A 3,   B 1.5, C 1.5 (tie of 2)
            "d5": (61, 66, 63)}   # A 3,   B 1,   C 2
RANK_SUMS = {"A": 10.5, "B": 8.0, "C": 11.5}


def _friedman_frame():
    return _frame({m: {d: float(v[i]) for d, v in FRIEDMAN.items()}
                   for i, m in enumerate("ABC")})


@pytest.fixture(scope="module")
def friedman_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("friedman")
    report.write_report(_friedman_frame(), out)
    return out


def test_friedman_statistic_with_ties_by_textbook_formula(friedman_dir):
    tmp_path, n, k = friedman_dir, 5, 3
    chi2 = 12 / (n * k * (k + 1)) * sum(r ** 2 for r in RANK_SUMS.values()) - 3 * n * (k + 1)
    ties = 2 * (2 ** 3 - 2)
    chi2 /= 1 - ties / (n * k * (k ** 2 - 1))
    assert chi2 == pytest.approx(1.3 / 0.9)
    row = pd.read_csv(tmp_path / "friedman.csv").iloc[0]
    assert row["statistic"] == pytest.approx(chi2)
    assert row["p"] == pytest.approx(math.exp(-chi2 / 2))  # chi-square sf with 2 df
    ranks = pd.read_csv(tmp_path / "average_ranks.csv").set_index("method")["average_rank"]
    assert ranks.to_dict() == pytest.approx({m: s / n for m, s in RANK_SUMS.items()})


def test_nemenyi_and_critical_difference_by_formula(friedman_dir):
    tmp_path, n, k = friedman_dir, 5, 3
    se = math.sqrt(k * (k + 1) / (6 * n))
    row = pd.read_csv(tmp_path / "friedman.csv").iloc[0]
    assert row["critical_difference"] == pytest.approx(2.343 * se, abs=2e-3)  # Demsar q_0.05, k=3
    assert report.critical_difference(4, 11) == pytest.approx(2.569 * math.sqrt(20 / 66), abs=2e-3)
    from scipy.stats import studentized_range
    pvals = pd.read_csv(tmp_path / "nemenyi.csv", index_col=0)
    for a, b in itertools.combinations("ABC", 2):
        q = abs(RANK_SUMS[a] - RANK_SUMS[b]) / n / se
        assert pvals.loc[a, b] == pytest.approx(studentized_range.sf(q * math.sqrt(2), k, np.inf))
    assert (tmp_path / "cd_diagram.png").stat().st_size > 1000
    assert "![Critical difference diagram](cd_diagram.png)" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------ missing cells

def test_missing_cells_are_shown_counted_and_excluded(tmp_path):
    seeds = (1, 2)
    table = {m: {d: [60.0 + i + j, 61.0 + i + j] for j, d in enumerate(["d1", "d2", "d3", "d4"])}
             for i, m in enumerate(["A", "B", "C"])}
    del table["C"]["d4"]                       # C absent on d4
    df = _frame(table, seeds=seeds)
    df = df[~((df["method"] == "B") & (df["dataset"] == "d3") & (df["seed"] == 2))]  # B: 1 of 2
    report.write_report(df, tmp_path)
    text = (tmp_path / "report.md").read_text()
    hm_table = text[text.index("### HM (%)"):]
    assert "| d4 | 63.50 | 64.50 | — |" in hm_table
    assert "| d3 | 62.50 | — (1/2 seeds) | 64.50 |" in hm_table
    missing = _section(text, "## Missing cells")
    assert "2 of 12 (method, dataset) cells" in missing
    assert "| B | d3 | incomplete | 1 | 2 |" in missing
    assert "| C | d4 | absent |  | 1 2 |" in missing
    cells = pd.read_csv(tmp_path / "per_dataset.csv").set_index(["method", "dataset"])
    assert math.isnan(cells.loc[("B", "d3"), "hm_mean"])
    assert math.isnan(cells.loc[("C", "d4"), "hm_mean"])
    assert len(pd.read_csv(tmp_path / "missing_cells.csv")) == 2
    res = pd.read_csv(tmp_path / "paired_wilcoxon.csv").set_index("method")
    assert res.loc["B", "n_datasets"] == 3 and res.loc["B", "excluded"] == "d3"
    assert res.loc["C", "n_datasets"] == 3 and res.loc["C", "excluded"] == "d4"
    assert "C vs A: 3 datasets used; excluded (missing cell): d4." in text
    assert pd.read_csv(tmp_path / "friedman.csv").iloc[0]["n_datasets"] == 2
    assert "excluded: d3, d4" in _section(text, "## Friedman / Nemenyi")
    avg = pd.read_csv(tmp_path / "averages.csv").set_index(["scope", "method"])
    assert math.isnan(avg.loc[("all", "C"), "mean_hm"])            # never averaged over fewer
    assert avg.loc[("common", "C"), "mean_hm"] == pytest.approx(np.mean([62.5, 63.5]))
    tests = pd.read_csv(tmp_path / "paired_ttest.csv")
    excluded = tests[(tests["method"] == "C") & (tests["dataset"] == "d4")].iloc[0]
    assert math.isnan(excluded["p"]) and "excluded" in excluded["note"]


def test_null_metric_counts_as_missing(tmp_path):
    _write(tmp_path / "r" / "1.json", _record("A", "d", 1, 80.0, 60.0))
    _write(tmp_path / "r" / "2.json", _record("B", "d", 1, 80.0, 60.0, hm=None))
    report.write_report(report.load_records(tmp_path / "r"), tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "missing_cells.csv")
    assert table.to_dict("records")[0]["null_metrics"] == "hm"


# ------------------------------------------------------------------ report files

def test_report_has_every_section_figures_and_csvs(tmp_path):
    df = _friedman_frame()
    hist = pd.DataFrame({"schedule": ["one"] * 4 + ["two"] * 3,
                         "trial_number": [3, 0, 1, 2, 0, 1, 2],
                         "hm": [65.0, 60.0, np.nan, 70.0, 50.0, 75.0, 74.0]})
    out = report.write_report(df, tmp_path / "out", baseline="B", search_histories=hist,
                              schedules=("A", "C"))
    text = out.read_text()
    assert out == tmp_path / "out" / "report.md"
    for heading in SECTIONS:
        assert "\n" + heading in text, heading
    assert "## Paired tests against B" in text
    schedule = _section(text, "## One-stage vs two-stage")
    assert "One-stage: **A**; two-stage: **C**" in schedule
    assert "![Best HM against trials spent](search_history.png)" in schedule
    best = pd.read_csv(tmp_path / "out" / "search_history.csv")
    one = best[best["schedule"] == "one"]
    assert list(one["trial_number"]) == [0, 1, 2, 3] and list(one["trials_spent"]) == [1, 2, 3, 4]
    assert list(one["best_hm"]) == [60.0, 60.0, 70.0, 70.0]
    assert list(best[best["schedule"] == "two"]["best_hm"]) == [50.0, 75.0, 75.0]
    sched = pd.read_csv(tmp_path / "out" / "schedule_wilcoxon.csv").iloc[0]
    assert sched["method"] == "C" and sched["baseline"] == "A" and sched["n_datasets"] == 5
    for name in ["per_dataset.csv", "averages.csv", "paired_wilcoxon.csv", "paired_ttest.csv",
                 "friedman.csv", "average_ranks.csv", "nemenyi.csv", "missing_cells.csv",
                 "schedule_ttest.csv", "tables.tex", "cd_diagram.png", "search_history.png"]:
        assert (tmp_path / "out" / name).exists(), name


def test_two_methods_skip_friedman_and_bad_arguments_raise(tmp_path):
    df = _frame({"A": {"d1": 60.0, "d2": 61.0}, "B": {"d1": 62.0, "d2": 63.0}})
    text = report.write_report(df, tmp_path).read_text()
    assert "Needs three or more methods" in _section(text, "## Friedman / Nemenyi")
    assert "Not requested" in _section(text, "## One-stage vs two-stage")
    assert "0 of 4 (method, dataset) cells" in text
    with pytest.raises(ValueError, match="baseline"):
        report.write_report(df, tmp_path, baseline="Z")
    with pytest.raises(ValueError, match="schedules"):
        report.write_report(df, tmp_path, schedules=("A", "Z"))
    with pytest.raises(ValueError, match="trial_number"):
        report.write_report(df, tmp_path, search_histories=pd.DataFrame({"schedule": [], "hm": []}))
    with pytest.raises(ValueError, match="duplicate"):
        report.write_report(pd.concat([df, df.iloc[:1]]), tmp_path)


def test_latex_tables_booktabs_and_bold_best_per_column(tmp_path):
    df = _frame({"coop_x": {"d1": 80.0, "d2": 60.0}, "B": {"d1": 70.0, "d2": 65.0}})
    report.write_report(df, tmp_path)
    tex = (tmp_path / "tables.tex").read_text()
    assert tex.count("\\begin{table*}") == 1 and "\\label{tab:base2novel}" in tex
    for rule in ["\\toprule", "\\bottomrule"]:
        assert tex.count(rule) == 3  # blocks: average, d1, d2
    rows = [line for line in tex.splitlines() if line.startswith(("CoOp", "B &"))]
    assert len(rows) == 6
    # average block: base = novel = HM; best = coop_x (70 > 67.5); d1 best coop_x, d2 best B
    assert rows[0] == "CoOp x & \\textbf{70.00} & \\textbf{70.00} & \\textbf{70.00} \\\\"
    assert rows[1] == "B & 67.50 & 67.50 & 67.50 \\\\"
    assert rows[2].startswith("CoOp x & \\textbf{80.00}") and rows[5].startswith("B & \\textbf{65.00}")


def test_records_scored_on_different_splits_are_not_mixed(tmp_path):
    _write(tmp_path / "a.json", _record("coop", "d1", 1, 70.0, 60.0, scored_on="test"))
    _write(tmp_path / "b.json", _record("coop", "d1", 2, 90.0, 95.0, scored_on="val"))
    with pytest.raises(ValueError, match=r"different splits.*test \(.*a.json\).*val \(.*b.json\)|"
                                         r"different splits.*val \(.*b.json\).*test \(.*a.json\)"):
        report.load_records(tmp_path)
