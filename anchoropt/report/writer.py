"""``write_report``: the report's files from the records, section by section."""
from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from anchoropt.report import sections
from anchoropt.report.context import check_methods, make_context
from anchoropt.report.latex import latex_tables
from anchoropt.report.provenance import provenance_section
from anchoropt.report.statistics import DEFAULT_HM_CONVENTION, best_so_far
from anchoropt.report.tuning import Tuning, tuning_sections


def write_report(df: pd.DataFrame, out_dir: Path | str, baseline: str | None = None,
                 search_histories: pd.DataFrame | None = None,
                 schedules: tuple[str, str] | None = None,
                 hm_convention: str = DEFAULT_HM_CONVENTION,
                 display_names: Mapping[str, str] | None = None, tuning: Tuning | None = None,
                 pairs: Mapping[str, str] | None = None, job: Mapping[str, Any] | None = None) -> Path:
    """Write report.md, report.html (the same, one self-contained page with the figures inlined),
    tables.tex, CSV tables and PNG figures into ``out_dir`` (created).

    ``df``: records as from ``load_records`` (columns method, dataset, seed, and acc_base,
    acc_novel, hm or, cross-dataset, acc and role, in percent; tuning, protocol, shots,
    backbone, pretrained, path and the anchor prompt's acc_anchor_* optional). ``baseline``: method
    the others are tested against (default: the first method in ``df``). ``schedules``:
    (one_stage_method, two_stage_method) for the one-stage vs two-stage section.
    ``search_histories``: columns schedule, trial_number, hm (see ``best_so_far``).
    ``tuning``: the main job's per-dataset searches (:mod:`anchoropt.report.tuning`), adding its
    sections before the missing-cells one. ``hm_convention``: per-dataset HM, ``seed_averaged`` (papers) or ``per_seed_mean``
    (``statistics.HM_CONVENTIONS``). ``display_names``: method -> name printed in tables.tex and
    figures (default ``tables.display_name``). ``pairs``: method -> the base it is compared with
    in the method-matrix section (e.g. ``{"maple_anchoropt": "maple", "maple_atp": "maple"}``).
    ``job``: the main job's suite file and wall time for the "Settings and provenance" section
    (:func:`anchoropt.pipeline.read_job`), which otherwise states the settings, versions and
    commits the records carry. Returns the path of report.md.
    Raises ValueError for an empty ``df``, missing columns, duplicated (method, dataset, seed),
    records of different settings (``records.check_comparable``), cross-dataset records without
    exactly one source dataset, an unknown HM convention, or a baseline / schedule / pair /
    display-name method that is not in ``df``.
    """
    ctx = make_context(df, Path(out_dir), baseline, hm_convention, display_names)
    if schedules is not None:
        check_methods(ctx, schedules, "schedules")
    for method, base in (pairs or {}).items():
        check_methods(ctx, [method, base], "pairs")
    if search_histories is not None:
        best_so_far(search_histories)  # raises before any file is written
    parts = [sections.header(ctx), provenance_section(ctx, job), sections.per_dataset_section(ctx), sections.anchor_section(ctx),
             sections.averages_section(ctx), sections.paired_section(ctx), sections.matrix_section(ctx, pairs),
             sections.friedman_section(ctx),
             sections.schedule_section(ctx, schedules, search_histories), sections.positions_section(ctx),
             *(tuning_sections(ctx, tuning) if tuning is not None else []), sections.missing_section(ctx)]
    (ctx.out_dir / "tables.tex").write_text(latex_tables(ctx), encoding="utf-8")
    text = "\n\n".join(parts) + "\n"
    (ctx.out_dir / "report.html").write_text(html_page(text, ctx.out_dir), encoding="utf-8")
    report = ctx.out_dir / "report.md"
    report.write_text(text, encoding="utf-8")
    return report


def html_page(markdown_text: str, folder: Path) -> str:
    """``markdown_text`` as one self-contained HTML page (``markdown`` with the ``tables``
    extension); PNGs it embeds from ``folder`` are inlined as data URIs, so the page can be shared
    alone, and ``mean ± std`` is joined by no-break spaces so that a narrow column never splits it.
    Raw HTML in the text is shown as text, never passed through: the report writes none itself, so
    a name that escaped ``escape.markdown`` still cannot become a tag or a script."""
    import markdown

    converter = markdown.Markdown(extensions=["tables"], output_format="html")
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)

    def inline(match: re.Match) -> str:
        file = folder / match.group(1)
        if not file.is_file():
            return match.group(0)
        data = base64.b64encode(file.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":/]+\.png)"', inline, body)
    body = body.replace(" ± ", "\u00a0±\u00a0")  # a "mean ± std" cell never wraps
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;font-size:14px}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Significance report</title>'
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")
