"""The report's "Settings and provenance" section, generated from the records themselves: the
configuration every run shares, the keys that differ between methods (or between datasets within a
method, as a tuned method's), the package versions and git commit that wrote the records and the
report, the suite file (a main job's ``RESULTS/job.json``, or the suites a benchmark's
``RESULTS/benchmark.yaml`` lists) and the main job's wall time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from anchoropt.escape import markdown
from anchoropt.report.context import Context
from anchoropt.report.tables import md_table

#: config keys that say where a run read or wrote, or which cell it was, not what ran
NOT_SETTINGS = ("dataset", "seed", "data_root", "cache_dir", "device", "descriptions", "descriptions_dir", "targets")
HEADING = "## Settings and provenance"


def provenance_section(ctx: Context, job: Mapping[str, Any] | None = None) -> str:
    """The section's Markdown. ``job``: the main job's ``suite``, ``wall_time_s`` (None: not
    recorded) and ``invocations`` (:func:`anchoropt.pipeline.read_job`); a benchmark's ``suite``
    alone (:func:`anchoropt.api.report`); None for records of ``anchoropt train``. Records are read from ``ctx.df["path"]`` (records without a
    file, e.g. a frame built in memory, have no settings to show)."""
    from anchoropt import __version__
    from anchoropt.records import git_commit

    records = _records(ctx.df)
    lines = [HEADING, ""]
    job = job or {}
    wall = job.get("wall_time_s")
    lines += [f"- Suite file: {markdown(job['suite']) if job.get('suite') else 'not recorded'}.",
              "- Main job wall time: " + (f"{wall / 60:.1f} min ({wall:.0f} s), the steps that ran something, "
                                          f"summed over {job.get('invocations', 1)} run(s) of `anchoropt run`"
                                          if wall is not None else "not recorded") + "."]
    versions = _values(records, lambda r: r.get("versions", {}).get("anchoropt"))
    commits = _values(records, lambda r: r.get("versions", {}).get("commit"))
    others = {k: _values(records, lambda r, k=k: r.get("versions", {}).get(k)) for k in ("torch", "open_clip", "python")}
    lines += [f"- Records written by anchoropt {versions}, git commit {commits}; "
              + ", ".join(f"{k} {v}" for k, v in others.items()) + ".",
              f"- Report written by anchoropt {__version__}, git commit {git_commit() or 'unknown (not a git checkout)'}.",
              f"- Records created: {_created(records)}."]
    if not records:
        return "\n".join(lines + ["", "No record file to read settings from."])
    groups, per_method = _settings(ctx, records)
    shared = groups.pop(tuple(m for m in ctx.methods if m in {k[0] for k in records}), {})
    lines += ["", "### Settings every run shares", "",
              "The resolved configuration (`anchoropt train --help` explains each key; paths, dataset and seed "
              "left out): the keys that apply to every run (`anchoropt.config.applies`) and have one value.", "",
              _assignments(shared) if shared else "None."]
    if groups:
        lines += ["", "### Settings of some methods only", "",
                  "Keys with one value that apply to these methods only (e.g. no anchor keys for CoOp, no training "
                  "keys for zero-shot).", "",
                  *[f"- {', '.join(markdown(ctx.name(m)) for m in methods)}: {_assignments(values)}"
                    for methods, values in groups.items()]]
    if len(per_method):
        lines += ["", "### Settings that differ between methods", "",
                  "A value per method where the key applies to it, blank where it does not; `a … b (per dataset)`: "
                  "the range over datasets (a tuned method's per-dataset best configuration: search_best.csv).", "",
                  md_table(per_method)]
    return "\n".join(lines)


def _assignments(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{markdown(k)} = {markdown(_shown(v))}" for k, v in values.items()) + "."


def _records(df: pd.DataFrame) -> dict[tuple, dict]:
    """(method, dataset, seed) -> the record read from its file (rows without a file skipped).
    Raises ValueError naming a file that no longer reads (``io.read_text``)."""
    from anchoropt.io import read_text

    return {(row.method, row.dataset, row.seed): json.loads(read_text(row.path, "record"))
            for row in df.itertuples() if isinstance(getattr(row, "path", None), str) and Path(row.path).is_file()}


def _values(records: dict[tuple, dict], get) -> str:
    """The distinct values ``get`` reads from the records (versions, commits: text of the record
    files, so escaped for Markdown), comma-separated."""
    found = sorted({str(v) for v in map(get, records.values()) if v not in (None, "")})
    return ", ".join(map(markdown, found)) if found else "not recorded"


def _created(records: dict[tuple, dict]) -> str:
    """First to last ``created`` time of the records, escaped for Markdown (text of the record files)."""
    times = sorted(str(r["created"]) for r in records.values() if r.get("created"))
    return f"{markdown(times[0])} to {markdown(times[-1])}" if times else "not recorded"


def _settings(ctx: Context, records: dict) -> tuple[dict[tuple, dict[str, Any]], pd.DataFrame]:
    """The keys that apply to some record (``anchoropt.config.applies``), in two parts. Those with
    one value over the records they apply to, and applying to every record of a method or to none:
    methods they apply to (in ``ctx.methods`` order) -> {key: value}. The others: a key x method
    table, a cell per method with its value(s) where the key applies, blank where it applies to none
    of the method's records."""
    from anchoropt.config import applies

    configs = {k: r.get("config", {}) for k, r in records.items()}
    keys = sorted({key for c in configs.values() for key in c} - set(NOT_SETTINGS))
    methods = [m for m in ctx.methods if any(method == m for method, _, _ in configs)]
    runs = {m: [c for (method, _, _), c in configs.items() if method == m] for m in methods}
    groups, rows = {}, []
    for key in keys:
        by_method = {m: [c.get(key) for c in runs[m] if applies(key, c)] for m in methods}
        values = {json.dumps(v) for vs in by_method.values() for v in vs}
        if not values:
            continue  # the key changes no run of the report
        if len(values) == 1 and all(len(by_method[m]) in (0, len(runs[m])) for m in methods):
            groups.setdefault(tuple(m for m in methods if by_method[m]), {})[key] = json.loads(values.pop())
            continue
        rows.append({"key": key, **{ctx.name(m): _cell(vs) for m, vs in by_method.items()}})
    order = sorted(groups, key=lambda g: (-len(g), [methods.index(m) for m in g]))
    return {g: groups[g] for g in order}, pd.DataFrame(rows)


def _cell(values: list) -> str:
    """The values of a key over a method's records where it applies, as one cell (blank: none)."""
    distinct = sorted({json.dumps(v) for v in values})
    if not distinct:
        return ""
    if len(distinct) == 1:
        return _shown(json.loads(distinct[0]))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        return f"{min(numbers):.3g} … {max(numbers):.3g} (per dataset)"
    return ", ".join(_shown(json.loads(d)) for d in distinct) + " (per dataset)"


def _shown(value: Any) -> str:
    """A config value as written in a config file (an empty string as "")."""
    return '""' if value == "" else str(value)
