"""PNG figures of a report (matplotlib on the Agg canvas)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd

from anchoropt.escape import mathtext
from anchoropt.report.statistics import ALPHA, posthocs

# a crossbar joining methods of equal average rank would have zero length: draw it this wide
MIN_BAR = 0.3  # rank units
#: widths of a two-column paper (inches; CVPR: 3.25 / 6.875, IEEE: 3.5 / 7.16): one column, the full text
COLUMN_WIDTH, TEXT_WIDTH = 3.3, 6.9
MAX_HEIGHT = 8.8  # inches: a page's text height, less room for the caption
DPI = 300
# font sizes (points) that stay legible when a figure is printed at COLUMN_WIDTH or TEXT_WIDTH
PAPER_STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
               "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 8}

# A method's colour, the same in every figure of every report and search (method_colours). Hue: what
# the method adds to its base prompt learner, from Okabe & Ito's colour-blind-safe palette (2008; their
# yellow left out: invisible on white); lightness: the base prompt learner, so that a report of every
# base x add-on reads as hue = add-on.
APPROACH_COLOURS = {"zero-shot": "#595959", "prompt": "#0072B2", "ATPrompt": "#009E73",
                    "AnchorOPT (two-stage)": "#D55E00", "AnchorOPT (one-stage)": "#CC79A7"}
#: base prompt learner -> share of white (> 0) or black (< 0) mixed into its add-on's hue
FAMILY_SHADES = {"CoOp": 0.0, "CoCoOp": 0.4, "MaPLe": -0.4, "DePT": 0.65, "KgCoOp": -0.65, "PromptSRC": 0.2}
TUNED_SHADE = -0.45  # a tuned method: its untuned colour, darker
#: methods outside the families (e.g. ablations): Paul Tol's colour-blind-safe "muted" scheme
OTHER_COLOURS = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")


def method_colours(methods) -> dict[str, str]:
    """The colour (``#rrggbb``) of each method a record or run names (``coop``, ``maple_anchoropt``,
    ``coop_anchoropt_one_stage_tuned``), read from its display name (``tables.display_name``, never
    a ``--name`` override): the hue of its add-on (:data:`APPROACH_COLOURS`: none, +ATPrompt,
    +AnchorOPT two-stage (also when no schedule is named, the default) or one-stage; zero-shot grey),
    lightened or darkened by its base (:data:`FAMILY_SHADES`), darker again when tuned: the same in
    every figure. Names outside these families (an ablation's) take :data:`OTHER_COLOURS` in the
    order of their sorted names, so that up to nine of them in one figure never share a colour."""
    colours = {m: _family_colour(m) for m in methods}
    others = sorted(m for m, c in colours.items() if c is None)
    return colours | {m: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, m in enumerate(others)}


def method_colour(method: str) -> str:
    """The colour of one method, as :func:`method_colours` gives it."""
    return method_colours([method])[method]


def _family_colour(method: str) -> str | None:
    """:func:`method_colours`' colour of a method of the known families, or None."""
    from anchoropt.report.tables import display_name

    words, qualifiers = re.fullmatch(r"(.*?)(?: \((.*)\))?", display_name(method)).groups("")
    parts, qualifiers = words.split("+"), qualifiers.split(", ")
    if words == "Zero-shot CLIP":
        return APPROACH_COLOURS["zero-shot"]
    if parts[0] in ("AnchorOPT", "ATPrompt"):  # the anchoropt method is CoOp+AnchorOPT
        parts = ["CoOp", *parts]
    if parts[0] not in FAMILY_SHADES or parts[1:] not in ([], ["ATPrompt"], ["AnchorOPT"]):
        return None
    approach = {(): "prompt", ("ATPrompt",): "ATPrompt"}.get(tuple(parts[1:])) or \
        ("AnchorOPT (one-stage)" if "one-stage" in qualifiers else "AnchorOPT (two-stage)")
    colour = _shade(APPROACH_COLOURS[approach], FAMILY_SHADES[parts[0]])
    return _shade(colour, TUNED_SHADE) if "tuned" in qualifiers else colour


def schedule_colour(schedule: str, methods: Mapping[str, str] | None = None) -> str:
    """The colour of a line drawn per schedule: that of ``methods[schedule]`` (the method the
    schedule's curve stands for), else of CoOp+AnchorOPT under ``schedule`` (``one_stage``,
    ``two_stage``), else of a method named ``schedule``."""
    from anchoropt.config import SCHEDULES

    if methods and schedule in methods:
        return method_colour(methods[schedule])
    return method_colour(f"anchoropt_{schedule}" if schedule in SCHEDULES else schedule)


def _shade(colour: str, share: float) -> str:
    """``colour`` mixed with white (``share`` > 0) or black (< 0) in that share."""
    rgb = np.array(matplotlib.colors.to_rgb(colour))
    rgb = rgb + (1.0 - rgb) * share if share > 0 else rgb * (1.0 + share)
    return matplotlib.colors.to_hex(rgb)


def cd_figure(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, label: str,
              colours: Mapping[str, str] | None = None):
    """Critical difference diagram (Demsar 2006) of ``ranks`` (method -> average rank, 1 = best)
    with Nemenyi ``pvalues`` (method x method): ``scikit_posthocs.critical_difference_diagram``
    draws the ranks and the crossbars joining methods whose p >= alpha (the table's groups),
    labels two decimals as in the tables; a group of tied ranks gets a visible bar
    (``MIN_BAR`` wide), and the CD bar is drawn under the diagram, clear of the rank ticks.
    ``colours``: method (as in ``ranks``) -> colour of its marker and line (:func:`method_colour`;
    default: the library's); labels stay black, legible whatever the colour.
    Returns (figure, artists dict of the library plus ``cd_bar`` and ``cd_text``)."""
    k = len(ranks)
    ranks = ranks.rename(index=mathtext)
    pvalues = pvalues.rename(index=mathtext, columns=mathtext)
    palette = {mathtext(m): c for m, c in colours.items()} if colours else None
    fig, ax = new_figure((TEXT_WIDTH, 1.2 + 0.3 * k))
    artists = posthocs().critical_difference_diagram(
        ranks, pvalues, alpha=ALPHA, ax=ax, label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}", crossbar_props={"solid_capstyle": "butt"},
        color_palette=palette, elbow_props={"linewidth": 1.5})
    for text in artists["labels"]:
        text.set_color("black")
    _ring_ties(artists["markers"])
    for (bar,) in artists["crossbars"]:
        xs = np.asarray(bar.get_xdata(), dtype=float)
        if xs.max() - xs.min() < MIN_BAR:
            mid = (xs.max() + xs.min()) / 2
            bar.set_xdata([mid - MIN_BAR / 2, mid + MIN_BAR / 2])
            bar.set_ydata(np.asarray(bar.get_ydata())[:2])
    bottom = min(t.get_position()[1] for t in artists["labels"]) - 1.0
    start = 1.0
    artists["cd_bar"] = ax.plot([start, start + cd], [bottom, bottom], color="k", linewidth=2,
                                marker="|", markersize=10)[0]
    artists["cd_text"] = ax.text(start + cd + 0.05, bottom, f"CD = {cd:.2f} (Nemenyi, α = {ALPHA})",
                                 va="center", ha="left", fontsize=7)
    ax.set_xlim(0.5, max(k + 0.5, start + cd + 0.5))
    ax.set_xticks(range(1, k + 1))
    ax.set_ylim(bottom - 0.8, 0.8)
    ax.set_title(f"Average rank on {label} (1 = best); bars join methods not significantly different",
                 fontsize=8, pad=20)
    fit_width(fig, TEXT_WIDTH)  # the method labels hang outside the axes at a fixed font size
    return fig, artists


def fit_width(fig, width: float) -> None:
    """Narrow ``fig`` by what hangs outside its axes (labels, a legend below them), so that the
    saved (cropped, :func:`save`) figure is ``width`` inches wide at most."""
    for _ in range(4):  # the overhang changes a little with the width: converge in a few steps
        drawn = fig.get_tightbbox(fig.canvas.get_renderer()).width
        if drawn <= width:
            break
        fig.set_size_inches(max(2.0, fig.get_size_inches()[0] - (drawn - width) - 0.05), fig.get_size_inches()[1])


def _ring_ties(markers: list) -> None:
    """Methods of equal average rank share one point: draw their markers as concentric rings of
    decreasing size so each stays visible."""
    by_rank: dict[float, list] = {}
    for marker in markers:
        by_rank.setdefault(round(float(marker.get_offsets()[0][0]), 9), []).append(marker)
    for group in by_rank.values():
        for i, marker in enumerate(group):
            marker.set_sizes([36.0 * (len(group) - i) ** 2])
            marker.set_zorder(3 + i)


def plot_cd(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, path: Path, label: str,
            colours: Mapping[str, str] | None = None) -> str:
    """``cd_figure`` saved as PNG at ``path``; returns the markdown embed."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig, _ = cd_figure(ranks, pvalues, cd, label, colours)
        save(fig, path)
    return f"![Critical difference diagram]({path.name})"


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save(fig, path: Path) -> None:
    """``fig`` as a PNG at ``DPI``, cropped to its content (so it prints at its own width, at most the
    paper width it was made for)."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.02)


def legend_above(ax, width: float = COLUMN_WIDTH) -> None:
    """The legend above the axes, where it hides no point or line: in two columns where the figure
    then stays ``width`` inches wide (cropped), else in one."""
    for ncol in (2, 1):
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=ncol, frameon=False, borderaxespad=0.2,
                  handletextpad=0.4, columnspacing=1.2)
        if ax.figure.get_tightbbox(ax.figure.canvas.get_renderer()).width <= width:
            break


def plot_history(best: pd.DataFrame, path: Path, ylabel: str = "best HM so far (%)",
                 xlabel: str = "trials spent", value: str = "best_hm", methods: Mapping[str, str] | None = None) -> str:
    """Step plot of ``value`` (default ``best_hm``) against ``trials_spent``, one line per
    schedule (labelled ``schedule_name``, coloured :func:`schedule_colour` with ``methods``:
    schedule -> the method it stands for), one column wide; returns the markdown embed.
    Raises ValueError when ``best`` has more than one ``value`` column (one line per column would
    be drawn under one label)."""
    from anchoropt.report.tables import schedule_name

    if list(best.columns).count(value) != 1:
        raise ValueError(f"plot_history: expected one {value!r} column, got columns {list(best.columns)}")
    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = new_figure((COLUMN_WIDTH, 2.4))
        for schedule, group in best.groupby("schedule", sort=False):
            ax.step(group["trials_spent"], group[value], where="post", label=mathtext(schedule_name(schedule)),
                    color=schedule_colour(schedule, methods))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        legend_above(ax)
        ax.grid(alpha=0.3)
        save(fig, path)
    return f"![Best HM against trials spent]({path.name})"


def pooled_positions(positions: pd.DataFrame) -> pd.DataFrame:
    """``learned_positions`` pooled over datasets: per (method, prompt length M+N) the share of
    runs (every seed of every dataset with that length) placing token j at position i.
    Returns columns method, n_ctx, datasets (count), runs, share ``[M+N, M+N]``; rows in the
    order the methods first appear, then by length."""
    rows = []
    for (method, size), group in positions.groupby(
            ["method", positions["share"].map(len)], sort=False):
        runs = group["n_seeds"].to_numpy()
        share = sum(s * n for s, n in zip(group["share"], runs)) / runs.sum()
        rows.append({"method": method, "n_ctx": int(group["n_ctx"].iloc[0]), "datasets": len(group),
                     "runs": int(runs.sum()), "share": share})
    order = list(dict.fromkeys(positions["method"]))
    rows.sort(key=lambda r: (order.index(r["method"]), len(r["share"])))
    return pd.DataFrame(rows, columns=["method", "n_ctx", "datasets", "runs", "share"])


def positions_figure(positions: pd.DataFrame, names: dict[str, str]):
    """Heatmaps of the learned position matrices (the paper's Figure 4), text width: a panel per
    (method, prompt length) of ``pooled_positions`` (datasets pooled: a tuned method whose datasets
    chose different anchor counts N gets a panel per N; a row per method then, else four panels to
    a row), rows = prompt positions 1..M+N, columns = tokens V1..VM (soft) and A1..AN (anchors),
    colour = share of runs placing that token there. ``names``: method -> display name.
    Per-dataset shares are in positions.csv. Returns (figure, the panels' axes)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pooled = pooled_positions(positions)
    methods = list(dict.fromkeys(pooled["method"]))
    per_method = int(pooled["method"].value_counts().max())
    if per_method > 1:  # (row, column) of each panel
        cols = max(3, per_method)
        places = [(methods.index(m), i) for m, g in pooled.groupby("method", sort=False) for i in range(len(g))]
    else:
        cols = min(4, len(pooled))
        places = [divmod(i, cols) for i in range(len(pooled))]
    rows = places[-1][0] + 1 if per_method == 1 else len(methods)
    # inches; the rest of the width holds the row labels and the colour bar, and the figure stays
    # within a page's text height (MAX_HEIGHT); few panels get a narrower figure, not wide gaps
    panel = max(0.5, min(1.15, (TEXT_WIDTH - 1.3) / cols, (MAX_HEIGHT - 0.3) / rows - 0.5))
    width = min(TEXT_WIDTH, cols * (panel + 0.4) + 1.3)
    fig = Figure(figsize=(width, rows * (panel + 0.5) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    image, panels = None, []
    for (r, c), cell in zip(places, pooled.itertuples()):
        ax = axes[r, c]
        ax.set_axis_on()
        size, m = len(cell.share), cell.n_ctx
        image = ax.imshow(cell.share, vmin=0.0, vmax=1.0, cmap="Blues")
        tokens = [f"V{i + 1}" for i in range(m)] + [f"A{i + 1}" for i in range(size - m)]
        ax.set_xticks(range(size), tokens, rotation=90)
        ax.set_yticks(range(size), [str(i + 1) for i in range(size)])
        ax.tick_params(labelsize=6 if size <= 8 else 5, length=2, pad=1)
        what = f"N = {size - m} ({cell.datasets} dataset{'s' * (cell.datasets != 1)})"
        name = mathtext(textwrap.fill(names.get(cell.method, cell.method), 20, break_on_hyphens=False))
        ax.set_title(what if per_method > 1 else f"{name}\n{what}", fontsize=6)
        if c == 0:
            ax.set_ylabel(f"{name}\nposition" if per_method > 1 else "position", fontsize=7)
        panels.append(ax)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=min(0.8, 2.5 / fig.get_size_inches()[1]),
                 label="share of runs")
    fig.supxlabel("token (V: soft tokens, A: anchors)", fontsize=7)
    _square_cells(fig, panels, rows)
    return fig, panels


def _square_cells(fig, panels: list, rows: int) -> None:
    """Make the layout cells of the (square) panels square by the figure's height. A square panel
    in a cell taller than wide is shrunk after the layout, and constrained layout counts the slack
    as room for the titles (they then overlap the tick labels of the row above); in a cell wider
    than tall it is shrunk to the cell's height (tiny panels, crowded ticks). Constrained layout
    moves the cells with the height, so a few steps converge; the height stays within MAX_HEIGHT."""
    for _ in range(6):
        fig.draw_without_rendering()
        height = fig.get_figheight()
        cells = [ax.get_position(original=True) for ax in panels]
        # inches each cell is taller than wide, the most lopsided cell
        excess = max((c.height * height - c.width * fig.get_figwidth() for c in cells), key=abs)
        target = min(MAX_HEIGHT, height - rows * excess)
        if abs(target - height) < 0.01:
            break
        fig.set_figheight(target)


def plot_positions(positions: pd.DataFrame, names: dict[str, str], path: Path) -> str:
    """``positions_figure`` saved as PNG at ``path``; returns the markdown embed."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig, _ = positions_figure(positions, names)
        save(fig, path)
    return f"![Learned position matrices]({path.name})"
