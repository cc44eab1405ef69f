"""Reading result records (``docs/INTERFACES.md``) into one table, refusing mixtures that cannot
share a report."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import pandas as pd

PROTOCOL_METRICS = {"base2novel": ("acc_base", "acc_novel", "hm"), "cross_dataset": ("acc",)}
METRICS = PROTOCOL_METRICS["base2novel"]
ALL_METRICS = tuple(dict.fromkeys(m for ms in PROTOCOL_METRICS.values() for m in ms))
KEY = ["method", "dataset", "seed"]
RECORD_COLUMNS = [*KEY, *ALL_METRICS, "objective", "scored_on", "protocol", "role", "path"]


def load_records(paths: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """Read every result record under ``paths`` (files, or folders searched recursively for
    ``*.json``) into one row per record.

    Returns columns method, dataset, seed (int), acc_base, acc_novel, hm (base2novel) and acc
    (cross_dataset) (float percent, NaN where the record has null or no value or the metric
    belongs to the other protocol), objective (what tuned the config), scored_on (``test`` or
    the leak-free ``val`` split), protocol (``base2novel`` when the record has none), role
    (cross_dataset: ``source`` or ``target``) and path (the file), sorted by method, dataset, seed.
    Raises FileNotFoundError for a path that does not exist; ValueError (one line naming the
    file) for a malformed record, naming both files for a duplicated (method, dataset, seed),
    naming one file of each kind when records of different splits or protocols are mixed, and
    when no record is found.
    """
    files = _record_files(paths)
    if not files:
        raise ValueError(f"no *.json result records found under {_paths_text(paths)}")
    df = pd.DataFrame([_read_record(f) for f in files], columns=RECORD_COLUMNS)
    check_duplicates(df)
    _check_one_kind(df, "scored_on", "test", "scored on different splits")
    _check_one_kind(df, "protocol", "base2novel", "of different protocols")
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


def _as_path_list(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """A single path or an iterable of paths, as a list of Path."""
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _paths_text(paths: Path | str | Iterable[Path | str]) -> str:
    return ", ".join(str(p) for p in _as_path_list(paths))


def _record_files(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """Record files under ``paths`` in a stable order, each file once."""
    found: dict[Path, Path] = {}
    for path in _as_path_list(paths):
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*.json") if p.is_file())
        elif path.is_file():
            candidates = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for candidate in candidates:
            found.setdefault(candidate.resolve(), candidate)
    return list(found.values())


def _read_record(path: Path) -> dict:
    """One record file as a row dict; ValueError naming the file if it is malformed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        row = _record_row(record)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{path}: malformed result record: {reason}") from None
    row["path"] = str(path)
    return row


def _record_row(record: object) -> dict:
    """Validate a parsed record (INTERFACES.md, record_version 1) and pick the report fields."""
    if not isinstance(record, dict):
        raise ValueError("top level is not a JSON object")
    if record.get("record_version") != 1:
        raise ValueError(f"record_version is {record.get('record_version')!r}, expected 1")
    row = {"method": _text_field(record, "method"), "dataset": _text_field(record, "dataset")}
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' is {seed!r}, expected an integer")
    row["seed"] = seed
    for name in ("objective", "scored_on", "role"):
        value = record.get(name)
        row[name] = None if value is None else str(value)
    row["protocol"] = str(record.get("protocol") or "base2novel")
    if row["protocol"] not in PROTOCOL_METRICS:
        raise ValueError(f"protocol is {row['protocol']!r}, expected one of {list(PROTOCOL_METRICS)}")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is missing or not an object")
    row.update({name: math.nan for name in ALL_METRICS})
    row.update({name: _metric_value(metrics, name) for name in PROTOCOL_METRICS[row["protocol"]]})
    return row


def _text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} is {value!r}, expected a non-empty string")
    return value


def _metric_value(metrics: dict, name: str) -> float:
    """A percent metric: a number in [0, 100], or NaN for null / absent / NaN."""
    value = metrics.get(name)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics.{name} is {value!r}, expected a number or null")
    if math.isnan(value):
        return math.nan
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"metrics.{name} is {value!r}, expected a percentage in [0, 100]")
    return float(value)


def _check_one_kind(df: pd.DataFrame, column: str, default: str, what: str) -> None:
    """Accuracies on test and on the small val split, or of different protocols, are not
    comparable: never mix them (ValueError naming one file of each kind; a missing value counts
    as ``default``)."""
    kinds = df.groupby(df[column].fillna(default))["path"].first()
    if len(kinds) > 1:
        found = ", ".join(f"{kind} ({path})" for kind, path in kinds.items())
        raise ValueError(f"records {what} cannot share a report: {found}")


def protocol_of(df: pd.DataFrame) -> str:
    """The one protocol of the records (``base2novel`` when none is recorded)."""
    found = set(df["protocol"].dropna()) if "protocol" in df.columns else set()
    if len(found) > 1:
        raise ValueError(f"records of different protocols cannot share a report: {sorted(found)}")
    return found.pop() if found else "base2novel"


def check_duplicates(df: pd.DataFrame) -> None:
    """ValueError naming both files of the first duplicated (method, dataset, seed)."""
    dup = df[df.duplicated(KEY, keep=False)]
    if dup.empty:
        return
    first = dup.sort_values(KEY, kind="stable").head(2)
    method, dataset, seed = first.iloc[0][KEY]
    where = " and ".join(str(p) for p in first.get("path", pd.Series(["<no path>"] * 2)))
    raise ValueError(
        f"duplicate result record for method={method!r} dataset={dataset!r} seed={seed}: {where}")
