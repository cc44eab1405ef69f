"""PNG figures of a report (matplotlib on the Agg canvas)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anchoropt.escape import mathtext
from anchoropt.report.statistics import ALPHA, posthocs

# a crossbar joining methods of equal average rank would have zero length: draw it this wide
MIN_BAR = 0.3  # rank units


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
    fig, ax = _figure((8.0, 1.8 + 0.4 * k))
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
                                 va="center", ha="left", fontsize=9)
    ax.set_xlim(0.5, max(k + 0.5, start + cd + 0.5))
    ax.set_xticks(range(1, k + 1))
    ax.set_ylim(bottom - 0.8, 0.8)
    ax.set_title(f"Average rank on {label} (1 = best); bars join methods not significantly different",
                 fontsize=9, pad=24)
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
    fig, _ = cd_figure(ranks, pvalues, cd, label)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return f"![Critical difference diagram]({path.name})"


def _figure(size: tuple[float, float]):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_history(best: pd.DataFrame, path: Path, ylabel: str = "best HM so far (%)",
                 xlabel: str = "trials spent") -> str:
    """Step plot of ``best_hm`` against ``trials_spent``, one line per schedule; markdown embed."""
    fig, ax = _figure((6.0, 4.0))
    for schedule, group in best.groupby("schedule", sort=False):
        ax.step(group["trials_spent"], group["best_hm"], where="post", label=mathtext(schedule))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return f"![Best HM against trials spent]({path.name})"


def plot_positions(positions: pd.DataFrame, names: dict[str, str], path: Path) -> str:
    """Heatmaps of the learned position matrices (the paper's Figure 4): one panel per
    (method, dataset) of ``learned_positions``, rows = prompt positions 1..M+N, columns = tokens
    V1..VM (soft) and A1..AN (anchors), colour = share of seeds placing that token there.
    ``names``: method -> display name. Returns the markdown embed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    methods = list(dict.fromkeys(positions["method"]))
    datasets = list(dict.fromkeys(positions["dataset"]))
    fig = Figure(figsize=(1.9 * len(datasets) + 1.0, 2.1 * len(methods) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(methods), len(datasets), squeeze=False)
    image = None
    for ax in axes.flat:
        ax.set_axis_off()
    for row in positions.itertuples():
        ax = axes[methods.index(row.method), datasets.index(row.dataset)]
        ax.set_axis_on()
        size, m = len(row.share), row.n_ctx
        image = ax.imshow(row.share, vmin=0.0, vmax=1.0, cmap="Blues")
        tokens = [f"V{i + 1}" for i in range(m)] + [f"A{i + 1}" for i in range(size - m)]
        ax.set_xticks(range(size), tokens, fontsize=6, rotation=90)
        ax.set_yticks(range(size), [str(i + 1) for i in range(size)], fontsize=6)
        ax.set_title(f"{mathtext(row.dataset)} ({row.n_seeds} seed{'s' * (row.n_seeds != 1)})", fontsize=7)
        if datasets.index(row.dataset) == 0:
            ax.set_ylabel(f"{mathtext(names.get(row.method, row.method))}\nposition", fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="share of seeds")
    fig.suptitle("Learned position matrix W (argmax): token (column) placed at each prompt position (row)",
                 fontsize=9)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return f"![Learned position matrices]({path.name})"
