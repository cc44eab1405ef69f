"""Issue #14: the report follows the papers' conventions, flags degenerate statistics and refuses
incomparable records. Each expected value is computed here by hand or by closed form."""
import itertools
import json
import math
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scipy  # noqa: E402

from anchoropt import report  # noqa: E402
from anchoropt.report.figures import MIN_BAR, cd_figure  # noqa: E402


def _hm(base, novel):
    return 2 * base * novel / (base + novel)


def _record(method, dataset, seed, base, novel, hm="auto", **extra):
    metrics = {"acc_base": base, "acc_novel": novel,
               "hm": (_hm(base, novel) if base is not None and novel is not None else None) if hm == "auto" else hm}
    metrics.update(extra.pop("metrics", {}))
    rec = {"record_version": 2, "method": method, "dataset": dataset, "seed": seed, "shots": 16,
           "protocol": "base2novel", "tuning": "untuned", "eval_split": "test", "backbone": "ViT-B-16",
           "pretrained": "openai", "metrics": metrics}
    rec.update(extra)
    return rec


def _write(path, rec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


def _frame(rows):
    """Records from (method, dataset, seed, base, novel) tuples, HM of each run computed."""
    return pd.DataFrame([{"method": m, "dataset": d, "seed": s, "acc_base": b, "acc_novel": n, "hm": _hm(b, n)}
                         for m, d, s, b, n in rows])


def _section(text, heading):
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


# ------------------------------------------------------------------ case 1: per-dataset HM convention

def test_per_dataset_hm_is_hm_of_seed_averaged_base_and_novel_and_says_so(tmp_path):
    # seeds (90, 50) and (50, 90): seed means 70 / 70 -> HM 70.00 (papers); per-seed HMs both
    # 2*90*50/140 = 64.2857 -> mean 64.29
    rows = [("A", "d1", 1, 90.0, 50.0), ("A", "d1", 2, 50.0, 90.0),
            ("B", "d1", 1, 60.0, 60.0), ("B", "d1", 2, 60.0, 60.0),
            ("A", "d2", 1, 80.0, 80.0), ("A", "d2", 2, 80.0, 80.0),
            ("B", "d2", 1, 70.0, 70.0), ("B", "d2", 2, 70.0, 70.0)]
    text = report.write_report(_frame(rows), tmp_path / "papers", baseline="B").read_text()
    cells = pd.read_csv(tmp_path / "papers" / "per_dataset.csv").set_index(["method", "dataset"])
    assert cells.at[("A", "d1"), "hm_mean"] == pytest.approx(70.0)
    hm_table = text[text.index("### HM (%)"):]
    assert "| d1 | 70.00 | 60.00 |" in hm_table
    # the paired test over datasets uses the same per-dataset HM: (70 - 60 + 80 - 70) / 2 = 10
    wil = pd.read_csv(tmp_path / "papers" / "paired_wilcoxon.csv").iloc[0]
    assert wil["mean_diff"] == pytest.approx(10.0)
    stated = "HM of the seed-averaged base and novel accuracies"
    for heading in ["### HM (%)", "## Averages", "## Paired tests against ", "# Significance report"]:
        assert stated in _section(text, heading), heading
    assert "HM of the seed-averaged base and novel accuracies" in (tmp_path / "papers" / "tables.tex").read_text()

    text = report.write_report(_frame(rows), tmp_path / "per_seed", baseline="B",
                               hm_convention="per_seed_mean").read_text()
    cells = pd.read_csv(tmp_path / "per_seed" / "per_dataset.csv").set_index(["method", "dataset"])
    assert cells.at[("A", "d1"), "hm_mean"] == pytest.approx(2 * 90 * 50 / 140)
    assert "| d1 | 64.29 ± 0.00 | 60.00 ± 0.00 |" in text
    assert "mean over seeds of each run's HM" in _section(text, "### HM (%)")
    assert "mean of the per-seed HMs" in (tmp_path / "per_seed" / "tables.tex").read_text()
    with pytest.raises(ValueError, match="HM convention 'median' unknown"):
        report.write_report(_frame(rows), tmp_path / "x", hm_convention="median")


# ------------------------------------------------------------------ case 2: zero-variance paired t-test

def test_constant_difference_over_seeds_is_flagged_not_evidence(tmp_path):
    base = [69.8, 71.3, 72.1]   # + 0.5 on every seed: float differences 0.4999.. / 0.5000..
    rows = [("B", "d1", s, v, v) for s, v in zip((1, 2, 3), base)]
    rows += [("A", "d1", s, v + 0.5, v + 0.5) for s, v in zip((1, 2, 3), base)]
    rows += [("B", "d2", s, 60.0, 60.0) for s in (1, 2, 3)]
    rows += [("A", "d2", s, 60.0 + d, 60.0 + d) for s, d in zip((1, 2, 3), (0.5, 1.0, 2.0))]
    text = report.write_report(_frame(rows), tmp_path, baseline="B").read_text()
    tt = pd.read_csv(tmp_path / "paired_ttest.csv").set_index("dataset")
    assert bool(tt.at["d1", "zero_variance"]) is True
    assert math.isnan(tt.at["d1", "t"]) and math.isnan(tt.at["d1", "p"])
    assert "zero variance" in tt.at["d1", "note"] and "not evidence" in tt.at["d1", "note"]
    # d2: diffs 0.5, 1, 2: mean 7/6, var 7/12, t^2 = 7; df = 2: p = 1 - |t| / sqrt(2 + t^2)
    assert tt.at["d2", "t"] == pytest.approx(math.sqrt(7), rel=1e-9)
    assert tt.at["d2", "p"] == pytest.approx(1 - math.sqrt(7) / 3, rel=1e-9)
    assert not bool(tt.at["d2", "zero_variance"])
    rows_shown = [line for line in _section(text, "## Paired tests against ").splitlines() if line.startswith("|")]
    assert not any(" inf " in line or "<0.0001" in line for line in rows_shown)
    assert "inf" not in (tmp_path / "paired_ttest.csv").read_text()


# ------------------------------------------------------------------ case 3: Wilcoxon details

def _sign_flip_p(diffs):
    """Two-sided p of the signed-rank statistic over all 2^n sign flips, zeros discarded, midranks."""
    d = np.asarray([x for x in diffs if x != 0], dtype=float)
    ranks = pd.Series(np.abs(d)).rank().to_numpy()
    total = ranks.sum()
    observed = min(ranks[d > 0].sum(), total - ranks[d > 0].sum())
    hits = sum(min(w, total - w) <= observed + 1e-9
               for w in (float(np.dot(s, ranks)) for s in itertools.product([0, 1], repeat=len(d))))
    return hits / 2 ** len(d)


def test_wilcoxon_states_method_zero_handling_version_and_smallest_p():
    # n = 5 positive distinct differences: exact p = 2 / 2^5 = 0.0625, also the smallest reachable
    out = report.wilcoxon_test([1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["p"] == pytest.approx(2 / 32) and out["min_p"] == pytest.approx(2 / 32)
    assert out["p_method"] == "exact" and out["n_nonzero"] == 5
    # a zero is discarded before ranking: same as n = 5
    assert report.wilcoxon_test([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])["n_nonzero"] == 5
    # tied |differences|: exact over sign flips with midranks
    tied = [1.0, 1.0, 2.0, -3.0, 3.0, 4.0]
    out = report.wilcoxon_test(tied)
    assert out["p"] == pytest.approx(_sign_flip_p(tied))
    assert out["p_method"].startswith("exact (all sign flips")
    assert out["min_p"] == pytest.approx(2 / 64)
    details = report.statistics.wilcoxon_details()
    assert f"SciPy {scipy.__version__}" in details and "zero_method='wilcox'" in details


def test_report_says_significance_is_out_of_reach_at_five_datasets(tmp_path):
    rows = []
    for i, d in enumerate(["d1", "d2", "d3", "d4", "d5"]):
        rows += [("B", d, 1, 60.0, 60.0), ("A", d, 1, 61.0 + i, 61.0 + i)]
    text = report.write_report(_frame(rows), tmp_path, baseline="B").read_text()
    assert "here n = 5 without ties: 2/2^5 = 0.0625" in text  # the report's own n, not a generic example
    row = pd.read_csv(tmp_path / "paired_wilcoxon.csv").iloc[0]
    assert row["p"] == pytest.approx(0.0625) and row["min_p"] == pytest.approx(0.0625)
    assert row["p_method"] == "exact" and row["n_nonzero"] == 5
    paired = _section(text, "## Paired tests against ")
    assert f"SciPy {scipy.__version__}" in paired and "zero differences discarded" in paired
    assert "unreachable with 5 nonzero Δ" in paired


# ------------------------------------------------------------------ case 4: CD diagram vs table

def _tied_groups_frame(n_datasets=8):
    rows = []
    for i in range(n_datasets):
        for m, v in {"A": 90.0, "B": 90.0, "C": 60.0, "D": 60.0}.items():
            rows.append((m, f"d{i}", 1, v + i, v + i))
    return _frame(rows)


def _boxes_overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_cd_diagram_draws_tied_groups_two_decimals_and_clear_cd_label(tmp_path):
    df = _tied_groups_frame()
    text = report.write_report(df, tmp_path).read_text()
    hm = report.metric_matrix(report.cell_stats(df))
    ranks, pvals = report.average_ranks(hm), report.nemenyi(hm)
    assert ranks.to_dict() == {"A": 1.5, "B": 1.5, "C": 3.5, "D": 3.5}   # by hand: ties share the mean rank
    # Demsar: q_0.05(k=4) = 2.569, CD = 2.569 * sqrt(4*5 / (6*8)) = 1.658 < 2: two groups
    cd = report.critical_difference(4, 8)
    assert cd == pytest.approx(2.569 * math.sqrt(20 / 48), abs=2e-3)
    assert "| A | 1.50 | B |" in text and "| C | 3.50 | D |" in text
    fig, art = cd_figure(ranks, pvals, cd, "HM")
    spans = sorted((min(b.get_xdata()), max(b.get_xdata())) for (b,) in art["crossbars"])
    assert len(spans) == 2
    for (lo, hi), centre in zip(spans, (1.5, 3.5)):
        assert hi - lo >= MIN_BAR - 1e-9 and (lo + hi) / 2 == pytest.approx(centre)
    labels = sorted(t.get_text() for t in art["labels"])
    assert labels == ["(3.50) C", "(3.50) D", "A (1.50)", "B (1.50)"]
    sizes = sorted(float(m.get_sizes()[0]) for m in art["markers"])
    assert sizes[0] < sizes[-1]  # tied markers drawn as rings of different size
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    texts = [t.get_window_extent(renderer) for t in [*art["labels"], art["cd_text"], ax.title]]
    for i, a in enumerate(texts):
        assert not any(_boxes_overlap(a, t) for t in ticks)
        assert not any(_boxes_overlap(a, b) for b in texts[i + 1:])
    assert "CD = 1.66" in art["cd_text"].get_text()


def test_cd_labels_show_two_decimals_like_the_table():
    ranks = pd.Series({"X": 1.95, "Y": 1.05, "Z": 3.0})
    pvals = pd.DataFrame(1.0, index=ranks.index, columns=ranks.index)
    _, art = cd_figure(ranks, pvals, 0.74, "HM")
    assert sorted(t.get_text() for t in art["labels"]) == ["(3.00) Z", "X (1.95)", "Y (1.05)"]


def test_all_methods_tied_friedman_dash_has_a_reason(tmp_path):
    rows = [(m, f"d{i}", 1, 70.0 + i, 70.0 + i) for i in range(4) for m in "ABC"]
    text = report.write_report(_frame(rows), tmp_path).read_text()
    friedman = _section(text, "## Friedman / Nemenyi")
    assert "Friedman χ² = —, p = — (—: every method ties on every dataset" in friedman
    assert "every method ties" in pd.read_csv(tmp_path / "friedman.csv").iloc[0]["note"]
    assert (tmp_path / "cd_diagram.png").is_file()


# ------------------------------------------------------------------ case 5: incomparable records

def test_records_of_different_shots_or_backbone_are_refused(tmp_path):
    _write(tmp_path / "vit" / "a.json", _record("coop", "dtd", 1, 70.0, 60.0))
    _write(tmp_path / "rn" / "b.json", _record("anchoropt", "dtd", 1, 50.0, 40.0, shots=4, backbone="RN50"))
    with pytest.raises(ValueError, match="different settings") as err:
        report.load_records(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "shots=16, backbone=ViT-B-16, pretrained=openai (" in message and "a.json" in message
    assert "shots=4, backbone=RN50, pretrained=openai (" in message and "b.json" in message
    _write(tmp_path / "rn" / "b.json", _record("anchoropt", "dtd", 1, 50.0, 40.0, pretrained="laion2b"))
    with pytest.raises(ValueError, match="pretrained=laion2b"):
        report.load_records(tmp_path)
    df = report.load_records(tmp_path / "vit")
    mixed = pd.concat([df, df.assign(method="other", shots=4)], ignore_index=True)
    with pytest.raises(ValueError, match="different settings"):
        report.write_report(mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _write(tmp_path / "vit" / "c.json", _record("anchoropt", "dtd", 1, 72.0, 61.0))  # same setting: fine
    text = report.write_report(report.load_records(tmp_path / "vit"), tmp_path / "ok").read_text()
    assert "shots 16, backbone ViT-B-16, pretrained openai" in text


# ------------------------------------------------------------------ case 6: one missing-metric rule

def test_record_with_null_novel_but_hm_is_missing_everywhere(tmp_path):
    res = tmp_path / "res"
    hms = {"B": [60.0, 61.0, 62.0, 63.0, 64.0, 65.0], "A": [62.0, 60.0, 65.0, 67.0, 64.5, 71.0],
           "C": [61.0, 62.0, 61.0, 60.0, 66.0, 64.0]}
    for m, values in hms.items():
        for i, v in enumerate(values):
            _write(res / m / f"d{i}.json", _record(m, f"d{i}", 1, v, v))
    # A on d0: novel null but an hm: the run counts for nothing
    _write(res / "A" / "d0.json", _record("A", "d0", 1, 62.0, None, hm=62.0))
    text = report.write_report(report.load_records(res), tmp_path / "out", baseline="B").read_text()
    out = tmp_path / "out"
    cells = pd.read_csv(out / "per_dataset.csv").set_index(["method", "dataset"])
    assert math.isnan(cells.at[("A", "d0"), "hm_mean"]) and math.isnan(cells.at[("A", "d0"), "acc_base_mean"])
    wil = pd.read_csv(out / "paired_wilcoxon.csv").set_index("method")
    assert wil.at["A", "n_datasets"] == 5 and wil.at["A", "excluded"] == "d0"
    diffs = [a - b for a, b in zip(hms["A"][1:], hms["B"][1:])]   # 0-1 ... d1..d5: -1, 2, 3, 0.5, 5
    assert wil.at["A", "p"] == pytest.approx(_sign_flip_p(diffs))
    tt = pd.read_csv(out / "paired_ttest.csv").set_index(["method", "dataset"])
    assert tt.at[("A", "d0"), "note"] == "excluded: missing or incomplete cell"
    assert "excluded: d0" in _section(text, "## Friedman / Nemenyi")
    missing = pd.read_csv(out / "missing_cells.csv")
    assert missing[["method", "dataset", "status"]].values.tolist() == [["A", "d0", "incomplete"]]
    assert text.count("**Missing data.**") == 1
    assert "a run lacking one (null or absent) counts for none of them" in text


# ------------------------------------------------------------------ case 7: tables.tex for a paper

SIGNIF_DIFFS = {"d1": (4.0, 5.0, 6.0), "d2": (-6.0, -5.0, -4.0), "d3": (0.5, 0.5, 0.5), "d4": (1.0, 2.0, 3.0)}


def _paper_frame():
    methods = ["coop", "coop_anchoropt_one_stage", "anchoropt_two_stage", "zeroshot"]
    rows = []
    for d, diffs in SIGNIF_DIFFS.items():
        for s, delta in zip((1, 2, 3), diffs):
            base = 60.0 + 2 * s
            rows += [("coop", d, s, base, base), ("coop_anchoropt_one_stage", d, s, base + delta, base + delta),
                     ("anchoropt_two_stage", d, s, base + 1, base - 1), ("zeroshot", d, s, 50.0 + s, 55.0)]
    return _frame(rows), methods


@pytest.mark.parametrize("method, shown", [("zeroshot", "Zero-shot CLIP"), ("zeroshot_clip", "Zero-shot CLIP"),
                                           ("clip", "CLIP"), ("coop_anchoropt_one_stage", "CoOp+AnchorOPT (one-stage)"),
                                           ("anchoropt_two_stage_tuned", "AnchorOPT (two-stage, tuned)")])
def test_display_names_never_repeat_the_model(method, shown):
    from anchoropt.report.tables import display_name
    assert display_name(method) == shown  # zeroshot_clip once printed "CLIP+CLIP"


def test_tables_tex_has_display_names_label_and_significance_marks(tmp_path):
    df, _ = _paper_frame()
    report.write_report(df, tmp_path, baseline="coop")
    tex = (tmp_path / "tables.tex").read_text()
    assert "\\label{tab:base2novel}" in tex
    assert "coop\\_anchoropt" not in tex and "CoOp+AnchorOPT (one-stage)" in tex
    assert "AnchorOPT (two-stage)" in tex and "Zero-shot CLIP &" in tex
    row = {}
    for block in tex.split("\\multicolumn{4}{c}{\\textbf{")[1:]:
        title = block.split("}")[0]
        row[title] = next(line for line in block.splitlines() if line.startswith("CoOp+AnchorOPT"))
    # t over seeds, df = 2: diffs 4,5,6 -> t = 5 sqrt(3), p = 1 - t / sqrt(2 + t^2) = 0.0131 < 0.05
    assert 1 - 5 * math.sqrt(3) / math.sqrt(2 + 75) < 0.05
    assert row["d1"].endswith("$^\\dagger$ \\\\") and row["d2"].endswith("$^\\ddagger$ \\\\")
    # d3: constant +0.5 (zero variance, no mark); d4: diffs 1,2,3 -> t = 2 sqrt(3), p = 0.0742: no mark
    assert 1 - 2 * math.sqrt(3) / math.sqrt(2 + 12) > 0.05
    assert "dagger" not in row["d3"] and "dagger" not in row["d4"]
    # the d1 block reports base / novel / HM of the seed means: 64 + 5 = 69
    assert row["d1"].startswith("CoOp+AnchorOPT (one-stage) & \\textbf{69.00} & \\textbf{69.00} & \\textbf{69.00}")


def _paper_scale_frame(protocol):
    """Five methods (long display names), eleven datasets, three seeds: a full paper table."""
    methods = ["coop", "coop_anchoropt_one_stage", "coop_anchoropt_two_stage", "anchoropt_two_stage", "zeroshot"]
    datasets = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
    rng = np.random.default_rng(0)
    if protocol == "base2novel":
        return _frame([(m, d, s, *rng.uniform(50, 95, 2)) for m in methods for d in datasets for s in (1, 2, 3)])
    return pd.DataFrame([{"method": m, "dataset": d, "seed": s, "acc": rng.uniform(30, 90), "protocol": protocol,
                          "role": "source" if d == "imagenet" else "target"}
                         for m in methods for d in datasets for s in (1, 2, 3)])


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="no LaTeX engine (pdflatex) on PATH: apt-get install texlive-latex-base "
                           "texlive-latex-recommended to compile tables.tex")
@pytest.mark.parametrize("columns", ["onecolumn", "twocolumn"])
@pytest.mark.parametrize("protocol", ["base2novel", "cross_dataset"])
def test_tables_tex_compiles_and_fits_the_page(tmp_path, columns, protocol):
    report.write_report(_paper_scale_frame(protocol), tmp_path)
    label = "tab:base2novel" if protocol == "base2novel" else "tab:cross_dataset"
    (tmp_path / "paper.tex").write_text(
        f"\\documentclass[{columns}]{{article}}\n{report.latex.PREAMBLE}\n\\begin{{document}}\n"
        f"\\input{{tables.tex}}\nSee Table~\\ref{{{label}}}.\n\\end{{document}}\n")
    for _ in range(2):  # the second pass resolves \ref
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-2000:]
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log and "Float too large" not in log
    assert "undefined" not in log.lower()


# ------------------------------------------------------------------ beyond: Figure 4, anchors, HTML

def test_position_heatmap_from_prompts_pt(tmp_path):
    torch = pytest.importorskip("torch")
    res = tmp_path / "res"
    # M = 2 soft tokens, N = 2 anchors; seed 1 keeps the order, seed 2 swaps positions 1 and 3
    orders = {1: [0, 1, 2, 3], 2: [2, 1, 0, 3]}
    for seed, order in orders.items():
        for m in ("anchoropt_two_stage", "coop"):
            rec = _write(res / m / "dtd" / f"seed{seed}.json", _record(m, "dtd", seed, 70.0, 60.0))
            tensors = {"ctx": torch.zeros(2, 8)}
            if m != "coop":
                tensors.update(position=torch.eye(4)[order] * 5.0, anchors=torch.zeros(2, 8))
            torch.save(tensors, rec.with_suffix(".prompts.pt"))
    text = report.write_report(report.load_records(res), tmp_path / "out").read_text()
    positions = pd.read_csv(tmp_path / "out" / "positions.csv")
    assert positions[["method", "dataset", "n_seeds"]].values.tolist() == [["anchoropt_two_stage", "dtd", 2]]
    share = np.array(json.loads(positions.iloc[0]["share"]))
    expected = (np.eye(4)[orders[1]] + np.eye(4)[orders[2]]) / 2  # by hand: rows 0, 2 split 1/2
    assert np.allclose(share, expected)
    assert "![Learned position matrices](positions.png)" in text
    assert (tmp_path / "out" / "positions.png").stat().st_size > 0


def test_anchor_prompt_accuracy_next_to_the_method(tmp_path):
    res = tmp_path / "res"
    for seed, (ab, an) in zip((1, 2), ((60.0, 40.0), (40.0, 60.0))):
        _write(res / f"a{seed}.json", _record("anchoropt", "dtd", seed, 70.0, 60.0,
                                             metrics={"acc_anchor_base": ab, "acc_anchor_novel": an}))
        _write(res / f"c{seed}.json", _record("coop", "dtd", seed, 72.0, 58.0))
    text = report.write_report(report.load_records(res), tmp_path / "out").read_text()
    section = _section(text, "## Anchor prompt vs method")
    # anchor seed means 50 / 50 -> HM 50.00; the method's HM = 2*70*60/130 = 64.62; Δ = 14.62
    assert f"| DTD | AnchorOPT | 70.00 | 50.00 | 60.00 | 50.00 | {_hm(70, 60):.2f} | 50.00 | {_hm(70, 60) - 50:.2f} |" \
        in section
    assert "CoOp |" not in section


def test_html_page_is_self_contained(tmp_path):
    rows = [(m, f"d{i}", 1, 60.0 + i + j, 60.0 + i) for i in range(3) for j, m in enumerate("ABC")]
    report.write_report(_frame(rows), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert 'src="data:image/png;base64,' in html and 'src="cd_diagram.png"' not in html
