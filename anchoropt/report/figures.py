"""PNG figures of a report (matplotlib on the Agg canvas)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from anchoropt.report.statistics import ALPHA, posthocs


def plot_cd(ranks: pd.Series, pvalues: pd.DataFrame, cd: float, path: Path, label: str) -> str:
    """CD diagram (``scikit_posthocs.critical_difference_diagram``) as PNG; markdown embed."""
    fig, ax = _figure((8.0, 1.5 + 0.35 * len(ranks)))
    posthocs().critical_difference_diagram(ranks, pvalues, cd=cd, alpha=ALPHA, ax=ax)
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


def plot_history(best: pd.DataFrame, path: Path) -> str:
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
