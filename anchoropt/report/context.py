"""The validated records and their cell statistics, shared by every report section."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from anchoropt.errors import brief
from anchoropt.escape import markdown, write_csv
from anchoropt.records import KEY, PROTOCOL_METRICS, check_comparable, check_duplicates, protocol_of
from anchoropt.report.statistics import (
    DEFAULT_HM_CONVENTION, HM_CONVENTIONS, PRIMARY, anchor_cell_stats, cell_stats, compare_over_datasets, holm,
    methods_in_order, metric_matrix, ttests_over_seeds)
from anchoropt.report.tables import display_name


@dataclass
class Context:
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
    hm_convention: str = DEFAULT_HM_CONVENTION
    anchor_cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty: no record has anchor accuracy
    display_names: Mapping[str, str] = field(default_factory=dict)

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
    def hm_note(self) -> str:
        """The per-dataset HM convention, stated under every table that shows or uses HM."""
        if self.protocol != "base2novel":
            return ""
        return f"Per-dataset HM: {HM_CONVENTIONS[self.hm_convention]} (`{self.hm_convention}`)."

    @property
    def scored(self) -> list[str]:
        """Datasets that enter averages and tests (all but the cross-dataset source)."""
        return [d for d in self.datasets if d != self.source]

    @property
    def primary_matrix(self) -> pd.DataFrame:
        """Per-dataset primary metric (HM under ``hm_convention``, or target accuracy), scored
        dataset x method."""
        return metric_matrix(self.cells, self.primary).loc[self.scored]

    @cached_property
    def comparisons(self) -> pd.DataFrame:
        """``compare_over_datasets`` of every other method against the baseline on
        ``primary_matrix``, with p_holm (Holm across these comparisons); empty for one method."""
        rows = [compare_over_datasets(self.primary_matrix, m, self.baseline) for m in self.methods
                if m != self.baseline]
        summary = pd.DataFrame(rows)
        if rows:
            summary["p_holm"] = holm(summary["p"])
        return summary

    @cached_property
    def baseline_ttests(self) -> pd.DataFrame:
        """``ttests`` of every other method against the baseline, one frame."""
        others = [m for m in self.methods if m != self.baseline]
        return pd.concat([self.ttests(m, self.baseline) for m in others], ignore_index=True) if others else \
            pd.DataFrame(columns=["method", "dataset", "p", "mean_diff", "zero_variance"])

    def ttests(self, method: str, baseline: str) -> pd.DataFrame:
        """``ttests_over_seeds`` of the primary metric on the scored datasets."""
        cells = self.cells[self.cells["dataset"].isin(self.scored)]
        return ttests_over_seeds(self.df, cells, method, baseline, self.primary, self.metrics)

    def name(self, method: str) -> str:
        """Display name of ``method`` for tables and figures (plain text: escape it for the format)."""
        return display_name(method, self.display_names)

    def md(self, text) -> str:
        """User text (a method, dataset or setting name) as literal Markdown (``escape.markdown``)."""
        return markdown(text)

    def csv(self, table: pd.DataFrame, name: str, index: bool = False) -> str:
        """Write ``table`` to ``out_dir/name`` (formula-like strings neutralised, ``escape.write_csv``)
        and return a markdown note pointing to it."""
        write_csv(table, self.out_dir / name, index=index)
        return f"CSV: [`{name}`]({name})"


def make_context(df: pd.DataFrame, out_dir: Path, baseline: str | None,
                 hm_convention: str = DEFAULT_HM_CONVENTION,
                 display_names: Mapping[str, str] | None = None) -> Context:
    """Validate the records (``check_comparable``, duplicates, columns) and compute the shared
    cell statistics; ValueError (one line) on any fault, before ``out_dir`` is created."""
    if df.empty:
        raise ValueError("no result records to report on")
    protocol = protocol_of(df)
    missing = [c for c in (*KEY, *PROTOCOL_METRICS[protocol]) if c not in df.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}")
    check_comparable(df)
    check_duplicates(df)
    source = _source_dataset(df) if protocol == "cross_dataset" else None
    methods = methods_in_order(df)
    datasets = sorted(df["dataset"].unique(), key=lambda d: (d != source, d))
    ctx = Context(df=df, cells=cell_stats(df, PROTOCOL_METRICS[protocol], hm_convention), methods=methods,
                  datasets=datasets, seeds=sorted(df["seed"].unique()),
                  baseline=baseline if baseline is not None else methods[0], out_dir=out_dir,
                  protocol=protocol, source=source, hm_convention=hm_convention,
                  anchor_cells=anchor_cell_stats(df, protocol, hm_convention),
                  display_names=dict(display_names or {}))
    check_methods(ctx, [ctx.baseline], "baseline")
    unknown = sorted(set(ctx.display_names) - set(methods))
    if unknown:
        raise ValueError(f"display names given for method(s) {brief(unknown)} not in the records ({brief(methods)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _source_dataset(df: pd.DataFrame) -> str:
    """The source dataset of cross-dataset records (ValueError unless exactly one)."""
    sources = sorted(set(df.loc[df.get("role", pd.Series(dtype=object)) == "source", "dataset"]))
    if len(sources) != 1:
        raise ValueError(f"cross-dataset records need exactly one source dataset (role 'source'), found {sources}")
    return sources[0]


def check_methods(ctx: Context, names: Sequence[str], what: str) -> None:
    """ValueError unless every name is a method of the records and the names differ."""
    unknown = [n for n in names if n not in ctx.methods]
    if unknown:
        raise ValueError(f"{what}: method(s) {brief(unknown)} not in the records ({brief(ctx.methods)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: needs two different methods, got {brief(list(names))}")
