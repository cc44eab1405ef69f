"""The validated records and their cell statistics, shared by every report section."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from anchoropt.report.loading import KEY, PROTOCOL_METRICS, check_duplicates, protocol_of
from anchoropt.report.statistics import PRIMARY, cell_stats, methods_in_order, metric_matrix


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
    def scored(self) -> list[str]:
        """Datasets that enter averages and tests (all but the cross-dataset source)."""
        return [d for d in self.datasets if d != self.source]

    @property
    def primary_matrix(self) -> pd.DataFrame:
        """Seed-averaged primary metric (HM, or target accuracy), scored dataset x method."""
        return metric_matrix(self.cells, self.primary).loc[self.scored]

    def csv(self, table: pd.DataFrame, name: str, index: bool = False) -> str:
        """Write ``table`` to ``out_dir/name`` and return a markdown note pointing to it."""
        table.to_csv(self.out_dir / name, index=index)
        return f"CSV: [`{name}`]({name})"


def make_context(df: pd.DataFrame, out_dir: Path, baseline: str | None) -> Context:
    """Validate the records and compute the shared cell statistics."""
    if df.empty:
        raise ValueError("no result records to report on")
    protocol = protocol_of(df)
    missing = [c for c in (*KEY, *PROTOCOL_METRICS[protocol]) if c not in df.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}")
    check_duplicates(df)
    source = _source_dataset(df) if protocol == "cross_dataset" else None
    methods = methods_in_order(df)
    datasets = sorted(df["dataset"].unique(), key=lambda d: (d != source, d))
    ctx = Context(df=df, cells=cell_stats(df, PROTOCOL_METRICS[protocol]), methods=methods,
                   datasets=datasets, seeds=sorted(df["seed"].unique()),
                   baseline=baseline if baseline is not None else methods[0], out_dir=out_dir,
                   protocol=protocol, source=source)
    check_methods(ctx, [ctx.baseline], "baseline")
    out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _source_dataset(df: pd.DataFrame) -> str:
    """The source dataset of cross-dataset records (ValueError unless exactly one)."""
    sources = sorted(set(df.loc[df.get("role", pd.Series(dtype=object)) == "source", "dataset"]))
    if len(sources) != 1:
        raise ValueError(f"cross-dataset records need exactly one source dataset (role 'source'), found {sources}")
    return sources[0]


def check_methods(ctx: Context, names: Sequence[str], what: str) -> None:
    unknown = [n for n in names if n not in ctx.methods]
    if unknown:
        raise ValueError(f"{what}: method(s) {unknown} not in the records ({ctx.methods})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: needs two different methods, got {list(names)}")
