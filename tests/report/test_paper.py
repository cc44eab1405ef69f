"""A report a researcher can paste into a paper (issue 26): display names, figure sizes, HTML cells,
the main job's tuning figures."""
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from anchoropt import report  # noqa: E402
from anchoropt.report import figures  # noqa: E402
from anchoropt.report.tables import display_name  # noqa: E402
from anchoropt.report.tuning import Tuning  # noqa: E402

METHODS = ("coop", "coop_anchoropt_one_stage", "coop_anchoropt_one_stage_tuned", "coop_anchoropt_two_stage",
           "coop_anchoropt_two_stage_tuned", "zeroshot_clip")
DATASETS = ("dtd", "eurosat", "oxford_flowers", "ucf101", "food101", "caltech101")


def _records(seeds=(1, 2, 3)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"method": m, "dataset": d, "seed": s, "acc_base": b, "acc_novel": n, "hm": 2 * b * n / (b + n),
             "tuning": "search_val" if m.endswith("tuned") else "untuned"}
            for m in METHODS for d in DATASETS for s in seeds
            for b, n in [rng.uniform(50, 80, size=2)]]
    return pd.DataFrame(rows)


def _tuning(params=("n_anchors", "lr", "anchor_lr")) -> Tuning:
    rng = np.random.default_rng(1)
    trials = pd.DataFrame([{"schedule": sched, "dataset": d, "trial": t, "status": "complete",
                            "hm": 60 + t * (1 if sched == "two_stage" else 0.5) + rng.uniform(0, 1),
                            "origin": "sampler", "wall_time_s": 3.0, "n_anchors": int(rng.integers(1, 8)),
                            "lr": 0.002, "anchor_lr": 0.002}
                           for sched in ("one_stage", "two_stage") for d in DATASETS for t in range(4)])
    trials = trials.drop(columns=[p for p in ("n_anchors", "lr", "anchor_lr") if p not in params])
    searches = pd.DataFrame([{"schedule": s, "dataset": d, "num_trials": 4, "sampler": "TPESampler",
                              "importances_note": None} for s in ("one_stage", "two_stage") for d in DATASETS])
    importances = pd.DataFrame(columns=["schedule", "dataset", "param", "importance"])
    return Tuning(trials, searches, importances,
                  {"one_stage": "coop_anchoropt_one_stage_tuned", "two_stage": "coop_anchoropt_two_stage_tuned"},
                  {"one_stage": "coop_anchoropt_one_stage", "two_stage": "coop_anchoropt_two_stage"}, "val", "asha")


def _write(tmp_path, tuning=None, **kw):
    return report.write_report(_records(), tmp_path, baseline="coop", tuning=tuning or _tuning(),
                               schedules=("coop_anchoropt_one_stage_tuned", "coop_anchoropt_two_stage_tuned"),
                               **kw).read_text()


def test_best_so_far_figure_has_one_visible_line_per_schedule(tmp_path, saved):
    """Issue 26: the legend read one_stage, one_stage, two_stage, two_stage and two lines were
    invisible (a ``gain`` -> ``best_hm`` rename onto a frame that already had ``best_hm``)."""
    _write(tmp_path)
    ax = saved["search_best_so_far.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["one-stage", "two-stage"]
    assert len(ax.get_lines()) == 2
    for line in ax.get_lines():
        assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()
    curves = pd.read_csv(tmp_path / "search_best_so_far.csv")
    last = curves[curves["dataset"] == "mean"].groupby("schedule")["gain"].last()
    drawn = {t.get_text(): line.get_ydata()[-1] for t, line in zip(ax.get_legend().get_texts(), ax.get_lines())}
    assert drawn == pytest.approx({"one-stage": last["one_stage"], "two-stage": last["two_stage"]})


def test_report_md_and_html_use_display_names_and_list_record_names_once(tmp_path):
    text = _write(tmp_path)
    body = text[text.index("## Per-dataset results"):]
    for raw in METHODS:
        assert raw not in body, raw  # record names only in the header's list (and the CSVs)
    assert "| dataset | CoOp | CoOp+AnchorOPT (one-stage) | CoOp+AnchorOPT (one-stage, tuned) |" in body
    assert "| Flowers102 |" in body and "| DTD |" in body
    assert "- CoOp+AnchorOPT (two-stage, tuned) (coop_anchoropt_two_stage_tuned): search_val" in text
    assert "## Paired tests against CoOp" in text
    html = (tmp_path / "report.html").read_text()
    assert "coop_anchoropt_two_stage_tuned</td>" not in html and "CoOp+AnchorOPT (two-stage, tuned)" in html
    assert pd.read_csv(tmp_path / "per_dataset.csv")["method"].isin(METHODS).all()  # CSVs keep record names


def test_html_cell_mean_and_std_never_wrap(tmp_path):
    """Issue 26: the HTML wrapped "65.56 ± 1.96" over three lines."""
    _write(tmp_path)
    html = (tmp_path / "report.html").read_text()
    cells = re.findall(r"<td>([^<]*±[^<]*)</td>", html)
    assert cells and all(re.fullmatch(r"\d+\.\d\d\u00a0±\u00a0\d+\.\d\d", c) for c in cells), cells[:3]


def _inches(png):
    with Image.open(png) as im:
        dpi = im.info["dpi"][0]
        return im.size[0] / dpi, im.size[1] / dpi


def test_figures_fit_a_two_column_paper(tmp_path):
    """Every figure prints at most at the text width of a two-column paper (single-column plots at
    most a column), at a resolution fit for print."""
    torch = pytest.importorskip("torch")
    df = _records()
    paths = []
    for rec in df.itertuples():  # learned position matrices: tuned methods with varying anchor counts
        path = tmp_path / "res" / rec.method / rec.dataset / f"seed{rec.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1 if "tuned" not in rec.method else 1 + DATASETS.index(rec.dataset) % 3
        torch.save({"ctx": torch.zeros(4, 8), "anchors": torch.zeros(n, 8),
                    "position": torch.randn(4 + n, 4 + n, generator=torch.Generator().manual_seed(rec.seed))},
                   path.with_suffix(".prompts.pt"))
        paths.append(str(path))
    report.write_report(df.assign(path=paths), tmp_path / "out", baseline="coop", tuning=_tuning(),
                        schedules=("coop_anchoropt_one_stage_tuned", "coop_anchoropt_two_stage_tuned"))
    out = tmp_path / "out"
    for name, limit in (("search_best_so_far.png", figures.COLUMN_WIDTH), ("hm_vs_anchors.png", figures.COLUMN_WIDTH),
                        ("cd_diagram.png", figures.TEXT_WIDTH), ("positions.png", figures.TEXT_WIDTH)):
        width, height = _inches(out / name)
        assert width <= limit + 0.02 and height <= 9.0, (name, width, height)
        with Image.open(out / name) as im:
            assert round(im.info["dpi"][0]) >= 300


def _boxes_overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_positions_figure_pools_datasets_into_few_readable_panels():
    """Issue 26: positions.png had 44 panels (4 methods x 11 datasets) with overlapping titles."""
    rng = np.random.default_rng(0)
    rows = []
    for method in ("coop_anchoropt_one_stage", "coop_anchoropt_one_stage_tuned", "coop_anchoropt_two_stage",
                   "coop_anchoropt_two_stage_tuned"):
        for i in range(11):
            n = 1 if "tuned" not in method else 1 + i % 3
            share = rng.dirichlet(np.ones(4 + n), size=4 + n)
            rows.append({"method": method, "dataset": f"toy_dataset_{i}", "n_seeds": 3, "seeds": "1 2 3",
                         "n_ctx": 4, "share": share})
    positions = pd.DataFrame(rows)
    pooled = figures.pooled_positions(positions)
    assert len(pooled) == 2 + 2 * 3  # one panel per (method, anchor count)
    first = pooled.iloc[0]
    assert first["datasets"] == 11 and first["runs"] == 33
    assert np.allclose(first["share"], np.mean([r for r in positions["share"][:11]], axis=0))
    with matplotlib.rc_context(figures.PAPER_STYLE):
        fig, axes = figures.positions_figure(positions, {m: display_name(m) for m in positions["method"]})
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(axes) == 8 and fig.get_size_inches()[0] <= figures.TEXT_WIDTH
    labels = [t for ax in axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in labels]
    panels = [ax.get_window_extent(renderer) for ax in axes]
    for i, box in enumerate(boxes):
        assert not any(_boxes_overlap(box, b) for b in boxes[i + 1:]), labels[i].get_text()
        assert not any(_boxes_overlap(box, p) for p in panels), labels[i].get_text()
    assert [ax.yaxis.label.get_text().split("\n")[0] for ax in axes if ax.yaxis.label.get_text()] == \
        ["CoOp+AnchorOPT", "CoOp+AnchorOPT", "CoOp+AnchorOPT", "CoOp+AnchorOPT"]  # one row per method
    for ax in axes:
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 5


def test_positions_figure_titles_clear_the_tick_labels_of_the_row_above():
    """Issue 23: in the ablation suite's positions.png (seven methods, N = 1, 2 and 4: two rows of
    four square panels) the second row's titles overlapped the first row's token labels, because
    equal-aspect panels shorter than their layout cell leave slack that constrained layout counts
    as room for the titles."""
    rng = np.random.default_rng(0)
    rows = [{"method": method, "dataset": f"toy_dataset_{i}", "n_seeds": 3, "seeds": "1 2 3", "n_ctx": 4,
             "share": rng.dirichlet(np.ones(4 + n), size=4 + n)}
            for method, n in (("anchoropt", 1), ("anchors_random", 1), ("anchors_word", 1), ("kd_off", 1),
                              ("n_anchors_2", 2), ("n_anchors_4", 4), ("novel_prompt", 1))
            for i in range(11)]
    with matplotlib.rc_context(figures.PAPER_STYLE):
        fig, axes = figures.positions_figure(pd.DataFrame(rows), {m: display_name(m) for m in dict.fromkeys(
            r["method"] for r in rows)})
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(axes) == 7 and fig.get_size_inches()[0] <= figures.TEXT_WIDTH
    for ax in axes:
        title = ax.title.get_window_extent(renderer)
        for other in axes:
            texts = [other.title, *other.get_xticklabels(), *other.get_yticklabels()] if other is not ax else \
                [*other.get_xticklabels(), *other.get_yticklabels()]
            for text in texts:
                assert not _boxes_overlap(title, text.get_window_extent(renderer)), \
                    (ax.get_title(), text.get_text())
    width, height = (axes[0].get_position().size * fig.get_size_inches())
    assert abs(width - height) < 0.01 and width >= 1.0  # square panels, an inch or more


def test_settings_and_provenance_section_from_the_records(tmp_path):
    """Issue 26: the report never stated the settings that produced it, the versions and commit, or the suite."""
    import json

    base = {"epochs": 10, "anchor_epochs": 20, "n_ctx": 4, "shots": 16, "lr": 0.002, "schedule": "two_stage",
            "data_root": "/where/ever", "seed": 0, "dataset": "x"}
    per_method = {"coop": {"method": "coop"}, "anchoropt_two_stage": {"method": "anchoropt", "n_anchors": 1},
                  "anchoropt_two_stage_tuned": {"method": "anchoropt"}}
    for method, extra in per_method.items():
        for i, dataset in enumerate(("dtd", "eurosat", "ucf101")):
            cfg = {**base, **extra, "dataset": dataset, "seed": 1}
            if method.endswith("tuned"):
                cfg |= {"n_anchors": 2 + i, "lr": 0.001 * (i + 1)}
            rec = {"record_version": 2, "method": method, "dataset": dataset, "seed": 1, "shots": 16,
                   "protocol": "base2novel", "tuning": "untuned", "eval_split": "test", "config": cfg,
                   "metrics": {"acc_base": 70.0 + i, "acc_novel": 60.0, "hm": 2 * (70 + i) * 60 / (130 + i)},
                   "versions": {"anchoropt": "0.1.0", "commit": "abc123def456", "torch": "2.13.0"},
                   "created": f"2026-12-06T20:0{i}:00+00:00"}
            path = tmp_path / "res" / method / dataset / "seed1.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(rec))
    text = report.write_report(report.load_records(tmp_path / "res"), tmp_path / "out",
                               job={"suite": "/repo/benchmarks/toy11.yaml", "wall_time_s": 1404.0,
                                    "invocations": 2}).read_text()
    section = text[text.index("## Settings and provenance"):text.index("## Per-dataset results")]
    assert "Suite file: /repo/benchmarks/toy11.yaml" in section
    assert "Main job wall time: 23.4 min (1404 s)" in section and "over 2 run(s)" in section
    assert "Records written by anchoropt 0.1.0, git commit abc123def456; torch 2.13.0" in section
    assert "Report written by anchoropt" in section
    assert "2026-12-06T20:00:00+00:00 to 2026-12-06T20:02:00+00:00" in section
    shared = section[section.index("### Settings every run shares"):section.index("### Settings that differ")]
    for item in ("epochs = 10", "n\\_ctx = 4", "shots = 16"):
        assert item.replace("\\_", "_") in shared.replace("\\_", "_"), item
    assert "/where/ever" not in section and "n_anchors =" not in shared
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert "| 1 | 2 … 4 (per dataset) |" in rows["n_anchors"]  # untuned, then tuned (per dataset)
    assert "0.001 … 0.003 (per dataset)" in rows["lr"] and "| coop |" in rows["method"]


def _write_records(root, configs: dict[str, dict]) -> None:
    import json

    for method, cfg in configs.items():
        for i, dataset in enumerate(("dtd", "eurosat", "ucf101")):
            b = 70.0 + i
            rec = {"record_version": 2, "method": method, "dataset": dataset, "seed": 1, "shots": 16,
                   "protocol": "base2novel", "tuning": "untuned", "eval_split": "test",
                   "config": {**cfg, "dataset": dataset, "seed": 1},
                   "metrics": {"acc_base": b, "acc_novel": 60.0, "hm": 2 * b * 60 / (b + 60)}}
            path = root / method / dataset / "seed1.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(rec))


def test_settings_table_lists_only_the_keys_that_apply_to_each_method(tmp_path):
    """Issue 26: the per-method settings listed anchor keys for CoOp and training keys for zero-shot."""
    from anchoropt.config import TrainConfig

    configs = {"zeroshot_clip": TrainConfig(method="zeroshot", epochs=10).to_dict(),
               "coop": TrainConfig(method="coop", epochs=10, n_ctx=16).to_dict(),  # n_ctx: 16 vs 4
               "coop_anchoropt_two_stage": TrainConfig(method="anchoropt", epochs=10, kd_weight=100.0).to_dict(),
               "coop_anchoropt_one_stage": TrainConfig(method="anchoropt", epochs=10, schedule="one_stage").to_dict(),
               "dept": TrainConfig(method="dept", epochs=10, dept_weight=0.6).to_dict()}
    _write_records(tmp_path / "res", configs)
    text = report.write_report(report.load_records(tmp_path / "res"), tmp_path / "out", baseline="coop").read_text()
    text = text.replace("\\_", "_")
    shared = text[text.index("### Settings every run shares"):text.index("### Settings of some methods only")]
    assert "shots = 16" in shared and "backbone = ToyCLIP" in shared and "epochs =" not in shared
    some = text[text.index("### Settings of some methods only"):text.index("### Settings that differ")]
    groups = {line[2:].split(": ", 1)[0]: line.split(": ", 1)[1] for line in some.splitlines() if line.startswith("- ")}
    trained = "CoOp, CoOp+AnchorOPT (one-stage), CoOp+AnchorOPT (two-stage), DePT"
    assert set(groups) == {trained, "CoOp+AnchorOPT (one-stage), CoOp+AnchorOPT (two-stage)",
                           "CoOp+AnchorOPT (two-stage)", "CoOp+AnchorOPT (one-stage)", "DePT"}
    assert "epochs = 10" in groups[trained] and "lr = 0.002" in groups[trained] and "anchor" not in groups[trained]
    assert "anchor_epochs = 20" in groups["CoOp+AnchorOPT (two-stage)"]  # Stage I: two-stage only
    assert "period = 1" in groups["CoOp+AnchorOPT (one-stage)"] and "dept_weight = 0.6" in groups["DePT"]
    section = text[text.index("### Settings that differ"):text.index("## Per-dataset results")]
    table = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    header, rows = [c.strip() for c in table[0]], {r[0].strip(): [c.strip() for c in r[1:]] for r in table[1:]}
    assert set(rows) == {"kd_weight", "method", "schedule", "n_ctx"}
    assert dict(zip(header[1:], rows["kd_weight"])) == {"Zero-shot CLIP": "", "CoOp": "", "DePT": "",
                                                       "CoOp+AnchorOPT (two-stage)": "100.0",
                                                       "CoOp+AnchorOPT (one-stage)": "1000.0"}
    for key in ("prompt_depth", "meta_net_ratio", "attributes", "stage1_n_ctx", "val_shots", "anchor_word"):
        assert f"{key} =" not in text, key  # applies to no run here


def _cd_colours(fig) -> dict[str, str]:
    """Method label (rank dropped) -> colour of the line leading to it in a saved CD diagram."""
    from matplotlib.colors import to_hex

    ax = fig.axes[0]
    ends = {(round(line.get_xdata()[0], 6), round(line.get_ydata()[0], 6)): to_hex(line.get_color())
            for line in ax.get_lines() if len(line.get_xdata()) == 3}  # the elbows
    return {re.sub(r"^\(\d\.\d\d\) | \(\d\.\d\d\)$", "", t.get_text()): ends[(round(t.get_position()[0], 6),
                                                                             round(t.get_position()[1], 6))]
            for t in ax.texts if (round(t.get_position()[0], 6), round(t.get_position()[1], 6)) in ends}


def test_each_method_has_one_colour_in_every_figure_and_report(tmp_path, saved):
    """Issue 26: CoOp was blue in one report's CD diagram and green in another's (the colour cycle
    followed the ranks)."""
    from matplotlib.colors import to_hex

    _write(tmp_path / "all")
    full = _cd_colours(saved["cd_diagram.png"])
    some = ["coop", "zeroshot_clip", "coop_anchoropt_one_stage", "coop_anchoropt_two_stage"]
    df = _records()
    report.write_report(df[df["method"].isin(some)].assign(acc_base=lambda d: 100 - d["acc_base"]),
                        tmp_path / "some", baseline="coop")
    fewer = _cd_colours(saved["cd_diagram.png"])
    assert set(full) == {display_name(m) for m in METHODS} and set(fewer) == {display_name(m) for m in some}
    for m in METHODS:
        assert full[display_name(m)] == figures.method_colour(m), m
    assert all(fewer[n] == full[n] for n in fewer)
    assert len(set(full.values())) == len(full)  # six methods, six colours
    lines = {t.get_text(): to_hex(line.get_color()) for t, line in
             zip(saved["search_best_so_far.png"].axes[0].get_legend().get_texts(),
                 saved["search_best_so_far.png"].axes[0].get_lines())}
    assert lines == {"one-stage": full["CoOp+AnchorOPT (one-stage)"], "two-stage": full["CoOp+AnchorOPT (two-stage)"]}


def test_method_colours_follow_the_add_on_and_base_and_keep_ablations_apart():
    c = figures.method_colours
    matrix = ["zeroshot", "coop", "coop_atp", "coop_anchoropt", "cocoop", "cocoop_atp", "cocoop_anchoropt", "maple",
              "maple_atp", "maple_anchoropt", "dept", "dept_atp", "dept_anchoropt"]
    assert len(set(c(matrix).values())) == len(matrix)
    assert c(["anchoropt_two_stage", "coop_anchoropt", "anchoropt"]) == dict.fromkeys(
        ["anchoropt_two_stage", "coop_anchoropt", "anchoropt"], figures.APPROACH_COLOURS["AnchorOPT (two-stage)"].lower())
    ablations = ["anchoropt", "anchors_random", "anchors_word", "w_identity", "w_permutation", "kd_off",
                 "novel_prompt", "n_anchors_2", "n_anchors_4"]
    assert len(set(c(ablations).values())) == len(ablations)


def test_positions_figure_of_few_panels_keeps_them_together():
    """reports/toy11_xd's positions.png: its two panels sat at the two ends of a text-wide figure,
    four inches apart."""
    rng = np.random.default_rng(0)
    rows = [{"method": method, "dataset": "toy_shape", "n_seeds": 3, "seeds": "1 2 3", "n_ctx": 4,
             "share": rng.dirichlet(np.ones(5), size=5)}
            for method in ("coop_anchoropt_one_stage", "coop_anchoropt_two_stage")]
    with matplotlib.rc_context(figures.PAPER_STYLE):
        fig, axes = figures.positions_figure(pd.DataFrame(rows), {r["method"]: display_name(r["method"]) for r in rows})
        fig.canvas.draw()
    left, right = (ax.get_window_extent(fig.canvas.get_renderer()) for ax in axes)
    assert (right.x0 - left.x1) / fig.dpi < 0.8, "panels apart"
    width, height = axes[0].get_position().size * fig.get_size_inches()
    assert abs(width - height) < 0.01 and width >= 1.0


def test_tuning_figures_legends_hide_no_point(tmp_path, saved):
    """reports/toy11's hm_vs_anchors.png: the legend box sat on the lowest one-stage points."""
    tuning = _tuning()
    tuning.trials.loc[tuning.trials["trial"] == 3, "status"] = "stopped"  # four legend entries
    _write(tmp_path, tuning=tuning)
    for name in ("hm_vs_anchors.png", "search_best_so_far.png"):
        fig = saved[name]
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        assert ax.get_legend().get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1, name
        assert _inches(tmp_path / name)[0] <= figures.COLUMN_WIDTH + 0.02, name


def test_positions_figure_of_the_main_job_keeps_panels_readable():
    """reports/toy11 (rows of 1, 6, 1 and 5 panels): taking a first layout's slack out of the height
    left panels 0.46 in wide, their token labels run together and the row labels overlapping."""
    rng = np.random.default_rng(0)
    counts = {"coop_anchoropt_one_stage": [1], "coop_anchoropt_one_stage_tuned": [1, 2, 4, 5, 6, 8],
              "coop_anchoropt_two_stage": [1], "coop_anchoropt_two_stage_tuned": [2, 4, 5, 6, 7]}
    rows = [{"method": m, "dataset": f"toy_{i}", "n_seeds": 3, "seeds": "1 2 3", "n_ctx": 4,
             "share": rng.dirichlet(np.ones(4 + n), size=4 + n)} for m, ns in counts.items() for i, n in enumerate(ns)]
    with matplotlib.rc_context(figures.PAPER_STYLE):
        fig, axes = figures.positions_figure(pd.DataFrame(rows), {m: display_name(m) for m in counts})
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        width, height = ax.get_position().size * fig.get_size_inches()
        assert abs(width - height) < 0.01 and width >= 0.7, (ax.get_title(), width)
    labels = [ax.yaxis.label.get_window_extent(renderer) for ax in axes if ax.yaxis.label.get_text()]
    assert len(labels) == 4 and not any(_boxes_overlap(a, b) for i, a in enumerate(labels) for b in labels[i + 1:])
    assert fig.get_size_inches()[1] <= figures.MAX_HEIGHT
