"""The method-matrix section (issue 11): each method against its base, checked by hand on synthetic records."""
import itertools
import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import special  # noqa: E402

from anchoropt import report  # noqa: E402
from anchoropt.report.tables import display_name  # noqa: E402

DATASETS = ["d1", "d2", "d3", "d4", "d5", "d6"]
SEEDS = (1, 2, 3)
PAIRS = {"coop_atp": "coop", "coop_anchoropt": "coop", "maple_anchoropt": "maple"}


def _records() -> pd.DataFrame:
    """Base and novel accuracy per (method, dataset, seed): each base draws its own numbers; a
    paired method adds its own shift per dataset plus seed noise, so every Δ differs."""
    rng = np.random.default_rng(11)
    rows = []
    level = {"coop": 70.0, "maple": 74.0}
    shift = {"coop": 0.0, "maple": 0.0, "coop_atp": 0.8, "coop_anchoropt": 2.0, "maple_anchoropt": -0.6}
    for method in ["coop", "coop_atp", "coop_anchoropt", "maple", "maple_anchoropt"]:
        base_of = PAIRS.get(method, method)
        for i, dataset in enumerate(DATASETS):
            for seed in SEEDS:
                b = level[base_of] + i + shift[method] * (1 + 0.3 * i) + rng.normal(0, 0.7)
                n = level[base_of] - 8 + 0.5 * i + shift[method] * 1.5 + rng.normal(0, 0.9)
                rows.append({"method": method, "dataset": dataset, "seed": seed, "acc_base": b, "acc_novel": n,
                             "hm": 2 * b * n / (b + n)})
    return pd.DataFrame(rows)


def _cell_hm(df, method, dataset):
    """The papers' per-dataset HM: of the seed-averaged base and novel accuracies."""
    sub = df[(df["method"] == method) & (df["dataset"] == dataset)]
    b, n = sub["acc_base"].mean(), sub["acc_novel"].mean()
    return 2 * b * n / (b + n)


def _exact_wilcoxon_p(diffs):
    """Two-sided exact p: the share of the 2^n sign assignments of the ranks at least as extreme."""
    ranks = pd.Series(np.abs(diffs)).rank().to_numpy()
    w_plus = ranks[np.asarray(diffs) > 0].sum()
    observed = min(w_plus, ranks.sum() - w_plus)
    extreme = sum(min(w, ranks.sum() - w) <= observed + 1e-9
                  for w in (float(np.dot(s, ranks)) for s in itertools.product([0, 1], repeat=len(ranks))))
    return extreme / 2 ** len(ranks)


def _student_p(d):
    """Two-sided p of the paired t-test from its formula: t = mean / (sd / sqrt(n)), n - 1 dof,
    p = I_{dof / (dof + t^2)}(dof / 2, 1 / 2) (regularised incomplete beta)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    t = d.mean() / (math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1)) / math.sqrt(n))
    return t, special.betainc((n - 1) / 2, 0.5, (n - 1) / ((n - 1) + t * t))


def _section(text, heading):
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    df = _records()
    text = report.write_report(df, out, baseline="coop", pairs=PAIRS).read_text()
    return df, out, text


def test_pair_tests_match_hand_computation(matrix):
    df, out, _ = matrix
    res = pd.read_csv(out / "pairs_wilcoxon.csv").set_index("method")
    assert list(res.index) == list(PAIRS) and list(res["baseline"]) == list(PAIRS.values())
    p_by_hand = {}
    for method, base in PAIRS.items():
        diffs = np.array([_cell_hm(df, method, d) - _cell_hm(df, base, d) for d in DATASETS])
        assert res.at[method, "mean_diff"] == pytest.approx(diffs.mean())
        assert (res.at[method, "wins"], res.at[method, "ties"], res.at[method, "losses"]) == \
            ((diffs > 0).sum(), 0, (diffs < 0).sum())
        p_by_hand[method] = _exact_wilcoxon_p(diffs)
        assert res.at[method, "p"] == pytest.approx(p_by_hand[method])
    # Holm over the three pairs: sort, multiply by (m - rank), running maximum, capped at 1
    running, holm = 0.0, {}
    for i, method in enumerate(sorted(p_by_hand, key=p_by_hand.get)):
        running = max(running, min(1.0, (len(PAIRS) - i) * p_by_hand[method]))
        holm[method] = running
    for method in PAIRS:
        assert res.at[method, "p_holm"] == pytest.approx(holm[method])
    assert res.at["coop_anchoropt", "wins"] == 6 and res.at["maple_anchoropt", "losses"] >= 4  # the shifts drawn


def test_pair_ttests_over_seeds_match_the_formula(matrix):
    df, out, text = matrix
    tt = pd.read_csv(out / "pairs_ttest.csv")
    assert len(tt) == len(PAIRS) * len(DATASETS)
    for row in tt.itertuples():
        a = df[(df["method"] == row.method) & (df["dataset"] == row.dataset)].sort_values("seed")["hm"].to_numpy()
        b = df[(df["method"] == row.baseline) & (df["dataset"] == row.dataset)].sort_values("seed")["hm"].to_numpy()
        t, p = _student_p(a - b)
        assert row.baseline == PAIRS[row.method]
        assert (row.t, row.p, row.mean_diff) == pytest.approx((t, p, (a - b).mean()))
    section = _section(text, "## Method matrix")
    d3 = tt[(tt["method"] == "coop_atp") & (tt["dataset"] == "d3")].iloc[0]
    assert f"{d3.mean_diff:.2f} ({d3.p:.4f})" in section  # the wide table's cell


def test_paper_style_averages_table_by_hand(matrix):
    df, _, text = matrix
    section = _section(text, "## Method matrix")
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["base method", "method", "base", "novel", "HM", "Δ base", "Δ novel", "Δ HM"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:6]]
    assert [r[1] for r in rows] == ["CoOp", "+ CoOp+ATPrompt", "+ CoOp+AnchorOPT", "MaPLe", "+ MaPLe+AnchorOPT"]

    def averages(method):
        cells = df[df["method"] == method].groupby("dataset")[["acc_base", "acc_novel"]].mean()
        b, n = cells["acc_base"].mean(), cells["acc_novel"].mean()
        return b, n, 2 * b * n / (b + n)  # HM of the averaged base and novel

    for row in rows:
        method = {"CoOp": "coop", "MaPLe": "maple"}.get(row[1]) or \
            {"+ CoOp+ATPrompt": "coop_atp", "+ CoOp+AnchorOPT": "coop_anchoropt", "+ MaPLe+AnchorOPT": "maple_anchoropt"}[row[1]]
        mine = averages(method)
        assert [float(v) for v in row[2:5]] == pytest.approx(mine, abs=0.005)
        if method in PAIRS:
            base = averages(PAIRS[method])
            assert [float(v) for v in row[5:8]] == pytest.approx([m - b for m, b in zip(mine, base)], abs=0.006)
        else:
            assert row[5:8] == ["", "", ""]


def test_no_pairs_says_how_to_ask_and_unknown_pair_method_raises(tmp_path):
    df = _records()
    text = report.write_report(df, tmp_path / "a").read_text()
    assert "Not requested (no pairs given: suite key `pairs`" in _section(text, "## Method matrix")
    with pytest.raises(ValueError, match="pairs: method\\(s\\) \\['dept'\\] not in the records"):
        report.write_report(df, tmp_path / "b", pairs={"coop_atp": "dept"})


def test_missing_cell_gives_no_average_and_is_left_out_of_the_pair_test(tmp_path):
    df = _records()
    df = df[~((df["method"] == "coop_anchoropt") & (df["dataset"] == "d2") & (df["seed"] == 3))]
    text = report.write_report(df, tmp_path, pairs=PAIRS).read_text()
    row = pd.read_csv(tmp_path / "pairs_wilcoxon.csv").set_index("method").loc["coop_anchoropt"]
    assert row["n_datasets"] == 5 and row["excluded"] == "d2"
    line = next(x for x in _section(text, "## Method matrix").splitlines() if "| + CoOp+AnchorOPT |" in x)
    assert line.count("—") == 6  # base, novel, HM and their Δ


def test_cli_pair_flag_and_method_display_names(tmp_path):
    from anchoropt.cli import main

    df = _records()
    for r in df.itertuples():
        path = tmp_path / "res" / r.method / r.dataset / f"seed{r.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"record_version": 2, "method": r.method, "dataset": r.dataset, "seed": r.seed, "shots": 16,
                    "protocol": "base2novel", "eval_split": "test", "tuning": "untuned",
                    "metrics": {"acc_base": r.acc_base, "acc_novel": r.acc_novel, "hm": r.hm}}))
    main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep"), "--baseline", "coop",
          "--pair", "maple_anchoropt=maple", "--pair", "coop_anchoropt=coop"])
    res = pd.read_csv(tmp_path / "rep" / "pairs_wilcoxon.csv")
    assert list(zip(res["method"], res["baseline"])) == [("maple_anchoropt", "maple"), ("coop_anchoropt", "coop")]
    assert [display_name(m) for m in ("coop_atp", "dept_anchoropt", "cocoop_atp", "anchoropt")] == \
        ["CoOp+ATPrompt", "DePT+AnchorOPT", "CoCoOp+ATPrompt", "AnchorOPT"]


def test_cross_dataset_matrix_averages_target_accuracy_without_the_source(tmp_path):
    rows = []
    acc = {"coop": [60.0, 50.0, 40.0], "coop_anchoropt": [61.0, 53.0, 45.0]}  # source, t1, t2
    for method, values in acc.items():
        for dataset, role, value in zip(["src", "t1", "t2"], ["source", "target", "target"], values):
            for seed in SEEDS:
                rows.append({"method": method, "dataset": dataset, "seed": seed, "acc": value + seed / 10,
                             "role": role, "protocol": "cross_dataset"})
    text = report.write_report(pd.DataFrame(rows), tmp_path, pairs={"coop_anchoropt": "coop"}).read_text()
    section = _section(text, "## Method matrix")
    assert "| base method | method | mean target accuracy | Δ mean target accuracy |" in section
    assert "| CoOp | + CoOp+AnchorOPT | 49.20 | 4.00 |" in section  # (53 + 45) / 2 + 0.2; the source left out
    row = pd.read_csv(tmp_path / "pairs_wilcoxon.csv").iloc[0]
    assert (row["n_datasets"], row["wins"], row["mean_diff"]) == (2, 2, pytest.approx(4.0))
