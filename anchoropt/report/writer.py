"""``write_report``: the report's files from the records, section by section."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from anchoropt.report import sections
from anchoropt.report.context import check_methods, make_context
from anchoropt.report.statistics import best_so_far
from anchoropt.report.tables import latex_tables


def write_report(df: pd.DataFrame, out_dir: Path | str, baseline: str | None = None,
                 search_histories: pd.DataFrame | None = None,
                 schedules: tuple[str, str] | None = None) -> Path:
    """Write report.md, tables.tex, CSV tables and PNG figures into ``out_dir`` (created).

    ``df``: records as from ``load_records`` (columns method, dataset, seed, and acc_base,
    acc_novel, hm or, cross-dataset, acc and role, in percent; objective, protocol, path
    optional). ``baseline``: method the others are tested against (default: the first method in ``df``). ``schedules``: (one_stage_method,
    two_stage_method) for the one-stage vs two-stage section. ``search_histories``: columns
    schedule, trial_number, hm (see ``best_so_far``). Returns the path of report.md.
    Raises ValueError for an empty ``df``, missing columns, duplicated (method, dataset, seed),
    mixed protocols, cross-dataset records without exactly one source dataset, or a baseline /
    schedule method that is not in ``df``.
    """
    ctx = make_context(df, Path(out_dir), baseline)
    if schedules is not None:
        check_methods(ctx, schedules, "schedules")
    if search_histories is not None:
        best_so_far(search_histories)  # raises before any file is written
    parts = [sections.header(ctx), sections.per_dataset_section(ctx), sections.averages_section(ctx),
             sections.paired_section(ctx), sections.friedman_section(ctx),
             sections.schedule_section(ctx, schedules, search_histories), sections.missing_section(ctx)]
    (ctx.out_dir / "tables.tex").write_text(latex_tables(ctx), encoding="utf-8")
    report = ctx.out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return report
