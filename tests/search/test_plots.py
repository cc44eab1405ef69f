"""A search folder's own figures (history.png, importances.png, hm_vs_anchors.png): sized for a
two-column paper and coloured as the report colours the searched method (issue 26)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from PIL import Image  # noqa: E402

from anchoropt.config import TrainConfig  # noqa: E402
from anchoropt.report import figures  # noqa: E402
from anchoropt.search import outputs  # noqa: E402
from anchoropt.search.spec import SearchSpec  # noqa: E402
from tests.helpers import TINY_SPACE  # noqa: E402


def _spec(**base) -> SearchSpec:
    return SearchSpec(space=TINY_SPACE, space_source="test", base=TrainConfig(**base).to_dict(), num_trials=6,
                      objective="val", sampler="tpe", seed=0, scheduler="asha", cpus_per_trial=1.0,
                      gpus_per_trial=0.0, max_concurrent=None, storage=None, study_name="s", max_epochs=2,
                      created="2026-12-06")


def _table(spec: SearchSpec):
    rows = [{"trial": t, "status": status, "hm": None if status == "failed" else 50.0 + t, "hm_se": 1.0,
             "params": {"n_anchors": 1 + t % 2, "lr": 0.002, "schedule": ("one_stage", "two_stage")[t % 2],
                        "kd_weight": 1}}
            for t, status in enumerate(("complete", "complete", "stopped", "complete", "failed", "stopped"))]
    return outputs.trials_table(rows, spec)


def test_search_figures_fit_a_column_of_a_two_column_paper(tmp_path, saved):
    """They were 6 x 4.4 in at 100 dpi, beside the report's 3.3 in at 300 dpi."""
    spec = _spec(method="maple_anchoropt")
    table = _table(spec)
    outputs._plot_history(table, tmp_path / "history.png", spec)
    outputs._plot_hm_vs_anchors(table, tmp_path / "hm_vs_anchors.png", spec)
    outputs._plot_importances({"lr": 0.7, "n_anchors": 0.2, "schedule": 0.1}, None, tmp_path / "importances.png", spec)
    outputs._plot_importances({}, "no parameter importances: 1 completed trial(s), at least 2 needed",
                              tmp_path / "none.png", spec)
    for name in ("history.png", "hm_vs_anchors.png", "importances.png", "none.png"):
        with Image.open(tmp_path / name) as im:
            dpi = im.info["dpi"][0]
            assert round(dpi) >= figures.DPI and im.size[0] / dpi <= figures.COLUMN_WIDTH + 0.02, name
    history = saved["history.png"].axes[0]
    assert min(t.get_fontsize() for t in history.texts) >= 6  # the caption, legible in print
    renderer = saved["history.png"].canvas.get_renderer()
    caption = history.texts[-1].get_window_extent(renderer)
    assert caption.y1 <= history.xaxis.label.get_window_extent(renderer).y0  # under the axis label, never on it


def test_search_figures_colour_the_method_as_the_report_does(tmp_path, saved):
    spec = _spec(method="maple_anchoropt")
    table = _table(spec)
    outputs._plot_history(table, tmp_path / "history.png", spec)
    outputs._plot_hm_vs_anchors(table, tmp_path / "hm_vs_anchors.png", spec)
    outputs._plot_importances({"lr": 0.7, "n_anchors": 0.3}, None, tmp_path / "importances.png", spec)
    colour = figures.method_colour("maple_anchoropt_two_stage")
    history = saved["history.png"].axes[0]
    assert to_hex(history.lines[0].get_color()) == colour  # the completed trials' markers
    bars = saved["importances.png"].axes[0].patches
    assert bars and all(to_hex(b.get_facecolor()) == colour for b in bars)
    by_label = {c.get_label(): c for c in saved["hm_vs_anchors.png"].axes[0].collections}
    one = figures.method_colour("maple_anchoropt_one_stage")
    assert to_hex(by_label["one-stage: completed"].get_facecolor()[0]) == one
    assert to_hex(by_label["two-stage: completed"].get_facecolor()[0]) == colour
    assert to_hex(by_label["one-stage: stopped early"].get_edgecolor()[0]) == one
    assert np.allclose(by_label["one-stage: stopped early"].get_facecolor(), 0)  # hollow


def test_search_figures_never_fail_on_a_base_setting(tmp_path):
    """Colouring reads the method from the base config without validating it: an anchors file
    moved since the search ran does not stop ``write_outputs`` from redrawing the plots."""
    spec = _spec(method="anchoropt", anchors=str(tmp_path / "moved.pt"))
    outputs._plot_history(_table(spec), tmp_path / "history.png", spec)
    assert (tmp_path / "history.png").stat().st_size > 1000
