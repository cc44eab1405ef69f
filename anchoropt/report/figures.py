"""PNG figures of a report (matplotlib on the Agg canvas)."""
from __future__ import annotations

import math
from pathlib import Path

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


def cd_figure(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, label: str):
    """Critical difference diagram (Demsar 2006) of ``ranks`` (method -> average rank, 1 = best)
    with Nemenyi ``pvalues`` (method x method): ``scikit_posthocs.critical_difference_diagram``
    draws the ranks and the crossbars joining methods whose p >= alpha (the table's groups),
    labels two decimals as in the tables; a group of tied ranks gets a visible bar
    (``MIN_BAR`` wide), and the CD bar is drawn under the diagram, clear of the rank ticks.
    Returns (figure, artists dict of the library plus ``cd_bar`` and ``cd_text``)."""
    k = len(ranks)
    ranks = ranks.rename(index=mathtext)
    pvalues = pvalues.rename(index=mathtext, columns=mathtext)
    fig, ax = _figure((TEXT_WIDTH, 1.2 + 0.3 * k))
    artists = posthocs().critical_difference_diagram(
        ranks, pvalues, alpha=ALPHA, ax=ax, label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}", crossbar_props={"solid_capstyle": "butt"})
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
    # the method labels hang outside the axes at a fixed font size: narrow the axes by their overhang
    # so that the saved (cropped) figure is TEXT_WIDTH wide at most
    for _ in range(4):  # the overhang changes a little with the width: converge in a few steps
        width = fig.get_tightbbox(fig.canvas.get_renderer()).width
        if width <= TEXT_WIDTH:
            break
        fig.set_size_inches(max(2.0, fig.get_size_inches()[0] - (width - TEXT_WIDTH) - 0.05),
                            fig.get_size_inches()[1])
    return fig, artists


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


def plot_cd(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, path: Path, label: str) -> str:
    """``cd_figure`` saved as PNG at ``path``; returns the markdown embed."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig, _ = cd_figure(ranks, pvalues, cd, label)
        save(fig, path)
    return f"![Critical difference diagram]({path.name})"


def _figure(size: tuple[float, float]):
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


def plot_history(best: pd.DataFrame, path: Path, ylabel: str = "best HM so far (%)",
                 xlabel: str = "trials spent", value: str = "best_hm") -> str:
    """Step plot of ``value`` (default ``best_hm``) against ``trials_spent``, one line per
    schedule (labelled ``schedule_name``), one column wide; returns the markdown embed.
    Raises ValueError when ``best`` has more than one ``value`` column (one line per column would
    be drawn under one label)."""
    from anchoropt.report.tables import schedule_name

    if list(best.columns).count(value) != 1:
        raise ValueError(f"plot_history: expected one {value!r} column, got columns {list(best.columns)}")
    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = _figure((COLUMN_WIDTH, 2.4))
        for schedule, group in best.groupby("schedule", sort=False):
            ax.step(group["trials_spent"], group[value], where="post", label=mathtext(schedule_name(schedule)))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
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
    # within a page's text height (MAX_HEIGHT)
    panel = max(0.5, min(1.15, (TEXT_WIDTH - 1.3) / cols, (MAX_HEIGHT - 0.3) / rows - 0.5))
    fig = Figure(figsize=(TEXT_WIDTH, rows * (panel + 0.5) + 0.3), layout="constrained")
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
    # a square panel in a cell taller than wide is shrunk after the layout, and constrained layout
    # counts the slack as room for the titles (they then overlap the tick labels of the row above):
    # take the slack out of the figure's height
    fig.draw_without_rendering()
    slack = max(ax.get_position(original=True).height - ax.get_position().height for ax in panels)
    if slack > 0:
        fig.set_figheight(fig.get_figheight() * (1 - rows * slack))
    return fig, panels


def plot_positions(positions: pd.DataFrame, names: dict[str, str], path: Path) -> str:
    """``positions_figure`` saved as PNG at ``path``; returns the markdown embed."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig, _ = positions_figure(positions, names)
        save(fig, path)
    return f"![Learned position matrices]({path.name})"
