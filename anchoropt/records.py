"""Result records (one JSON file per run or benchmark cell), the one owner of their schema: build,
rewrite per scored dataset, upgrade old versions, validate, and load into a table.

Record version 2 (``docs/INTERFACES.md``)::

    {"record_version": 2, "method": "coop", "dataset": "toy_shape", "seed": 1, "shots": 16,
     "protocol": "base2novel", "tuning": "untuned", "eval_split": "test", "backbone": "ToyCLIP",
     "pretrained": "toy", "config": {...TrainConfig...}, "metrics": {"acc_base": 81.2, ...},
     "wall_time_s": 12.3, "versions": {...}, "created": "2026-11-29T19:00:00+00:00"}

``eval_split`` is the split scored (``test``, or the leak-free ``val``); ``tuning`` is what produced the
configuration (:data:`TUNINGS`). Version 1 called them ``scored_on`` and ``objective`` (with the
config key ``objective`` for the split, and ``val``/``test`` for a search's objective); :func:`upgrade`
reads it.
"""
from __future__ import annotations

import functools
import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from anchoropt.errors import brief

if TYPE_CHECKING:  # pandas only for load_records; torch and open_clip only for build_record
    import pandas as pd

    from anchoropt.config import TrainConfig

RECORD_VERSION = 2
#: what produced a configuration: nothing, a given file, or a search scored on val / test
TUNINGS = ("untuned", "given", "search_val", "search_test")
PROTOCOL_METRICS = {"base2novel": ("acc_base", "acc_novel", "hm"), "cross_dataset": ("acc",)}
METRICS = PROTOCOL_METRICS["base2novel"]
# accuracy of the method's own anchor prompt alone, where it has one; never required
ANCHOR_METRICS = {"base2novel": ("acc_anchor_base", "acc_anchor_novel"), "cross_dataset": ("acc_anchor",)}
ALL_METRICS = tuple(dict.fromkeys(m for ms in [*PROTOCOL_METRICS.values(), *ANCHOR_METRICS.values()] for m in ms))
KEY = ["method", "dataset", "seed"]
# what makes two runs comparable at all: records that differ in one of these never share a report
SETTING = ("protocol", "shots", "backbone", "pretrained")
RECORD_COLUMNS = [*KEY, *ALL_METRICS, "tuning", "eval_split", "protocol", "shots", "backbone", "pretrained",
                  "role", "path"]


def build_record(cfg: TrainConfig, metrics: dict[str, float], wall_time_s: float, tuning: str = "untuned",
                 training: dict | None = None, activation: dict | None = None) -> dict:
    """The record of one run of ``cfg``: metrics in percent, wall time in seconds, package versions,
    ``training``, what the run did (``anchoropt.train.training_summary``: optimiser updates per
    trainable group, Stage I descriptions cut at the context length), and ``activation``, the
    backbone's MLP activation as it ran: ``{"function": "quick_gelu" | "gelu", "decided_by": ...}``
    (:func:`anchoropt.backbone.decide_quick_gelu`).

    ``method`` is ``cfg.run_name`` (``<method>_<schedule>`` for methods with AnchorOPT); a benchmark renames it to
    the suite's method with :func:`relabel`."""
    import torch

    import anchoropt
    import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
    import open_clip

    return {
        "record_version": RECORD_VERSION,
        "method": cfg.run_name,
        "dataset": cfg.dataset, "seed": cfg.seed, "shots": cfg.shots, "protocol": cfg.protocol,
        "tuning": _tuning(tuning), "eval_split": cfg.eval_split, "backbone": cfg.backbone,
        "pretrained": cfg.pretrained, "activation": activation or {}, "config": cfg.to_dict(), "metrics": metrics,
        "training": training or {},
        "wall_time_s": round(wall_time_s, 3),
        "versions": {"anchoropt": anchoropt.__version__, "commit": git_commit(), "torch": torch.__version__,
                     "open_clip": open_clip.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the anchoropt source that runs (short hash, ``+dirty`` when tracked files
    differ from it), or None outside a git checkout (an installed package) or without git."""
    import subprocess

    where = Path(__file__).resolve().parent.parent
    if not (where / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def relabel(record: dict, method: str, tuning: str) -> dict:
    """A copy of ``record`` named as the suite's ``method`` and tuned by ``tuning`` (:data:`TUNINGS`)."""
    return {**record, "method": method, "tuning": _tuning(tuning)}


def _tuning(value: str) -> str:
    if value not in TUNINGS:
        raise ValueError(f"tuning is {brief(value)}, expected one of {', '.join(TUNINGS)}")
    return value


def dataset_records(record: dict) -> dict[str, dict]:
    """The records a run writes, by scored dataset: the run's own record under base2novel; under
    cross_dataset one per scored dataset (the source and each target), with ``dataset`` set to it,
    ``source`` named, ``role`` ``source`` or ``target``, and metrics ``acc`` (and ``acc_anchor``, the
    anchor prompt alone) in percent."""
    if record["protocol"] == "base2novel":
        return {record["dataset"]: record}
    source = record["config"]["dataset"]
    out = {}
    for dataset in [source, *[t.strip() for t in record["config"]["targets"].split(",") if t.strip()]]:
        metrics = {"acc": record["metrics"][f"acc_{dataset}"]}
        if f"acc_anchor_{dataset}" in record["metrics"]:
            metrics["acc_anchor"] = record["metrics"][f"acc_anchor_{dataset}"]
        out[dataset] = {**record, "dataset": dataset, "source": source,
                        "role": "source" if dataset == source else "target", "metrics": metrics}
    return out


def upgrade(record: dict) -> dict:
    """A record of any version as version 2 (version 1: ``objective`` -> ``tuning``, with a search's
    ``val``/``test`` -> ``search_val``/``search_test``; ``scored_on`` -> ``eval_split``; config key
    ``objective`` -> ``eval_split``). Raises ValueError for an unknown version."""
    version = record.get("record_version")
    if version == RECORD_VERSION:
        return record
    if version != 1:
        raise ValueError(f"record_version is {brief(version)}, expected 1 or {RECORD_VERSION}")
    out = {k: v for k, v in record.items() if k not in ("objective", "scored_on")}
    objective = record.get("objective")
    out.update(record_version=RECORD_VERSION, tuning={"val": "search_val", "test": "search_test"}.get(objective, objective),
               eval_split=record.get("scored_on"))
    if isinstance(record.get("config"), dict) and "objective" in record["config"]:
        config = {k: v for k, v in record["config"].items() if k != "objective"}
        out["config"] = {**config, "eval_split": record["config"]["objective"]}
    return out


def load_records(paths: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """Read every result record under ``paths`` (files, or folders searched recursively for
    ``*.json``) into one row per record.

    Returns columns method, dataset, seed (int), acc_base, acc_novel, hm (base2novel) and acc
    (cross_dataset), and the anchor prompt's acc_anchor_base, acc_anchor_novel / acc_anchor
    (float percent, NaN where the record has null or no value or the metric belongs to the other
    protocol), tuning (what produced the config), eval_split (``test`` or the leak-free ``val``
    split), protocol (``base2novel`` when the record has none), shots, backbone, pretrained (None
    where not recorded), role (cross_dataset: ``source`` or ``target``) and path (the file),
    sorted by method, dataset, seed. Records of version 1 are read through :func:`upgrade`.
    Raises FileNotFoundError for a path that does not exist; ValueError (one line naming the
    file) for a malformed record, naming both files for a duplicated (method, dataset, seed),
    naming one file of each kind when records of different splits or settings (protocol, shots,
    backbone, pretrained weights: :func:`check_comparable`) are mixed, and when no record is found.
    """
    import pandas as pd

    files = _record_files(paths)
    if not files:
        raise ValueError(f"no *.json result records found under {_paths_text(paths)}")
    df = pd.DataFrame([_read_record(f) for f in files], columns=RECORD_COLUMNS)
    check_duplicates(df)
    _check_one_kind(df, "eval_split", "test", "scored on different splits")
    _check_one_kind(df, "protocol", "base2novel", "of different protocols")
    check_comparable(df)
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
    """Validate a parsed record (any version, upgraded) and pick the report fields."""
    if not isinstance(record, dict):
        raise ValueError("top level is not a JSON object")
    record = upgrade(record)
    row = {"method": _text_field(record, "method"), "dataset": _text_field(record, "dataset")}
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' is {brief(seed)}, expected an integer")
    row["seed"] = seed
    for name in ("tuning", "eval_split", "role", "backbone", "pretrained"):
        value = record.get(name)
        row[name] = None if value is None else str(value)
    shots = record.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int)):
        raise ValueError(f"'shots' is {brief(shots)}, expected an integer")
    row["shots"] = shots
    row["protocol"] = str(record.get("protocol") or "base2novel")
    if row["protocol"] not in PROTOCOL_METRICS:
        raise ValueError(f"protocol is {brief(row['protocol'])}, expected one of {list(PROTOCOL_METRICS)}")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is missing or not an object")
    row.update({name: math.nan for name in ALL_METRICS})
    wanted = (*PROTOCOL_METRICS[row["protocol"]], *ANCHOR_METRICS[row["protocol"]])
    row.update({name: _metric_value(metrics, name) for name in wanted})
    return row


def _text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{brief(name)} is {brief(value)}, expected a non-empty string")
    return value


def _metric_value(metrics: dict, name: str) -> float:
    """A percent metric: a number in [0, 100], or NaN for null / absent / NaN."""
    value = metrics.get(name)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metrics.{name} is {brief(value)}, expected a number or null")
    if math.isnan(value):
        return math.nan
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"metrics.{name} is {brief(value)}, expected a percentage in [0, 100]")
    return float(value)


def _check_one_kind(df: pd.DataFrame, column: str, default: str, what: str) -> None:
    """Accuracies on test and on the small val split, or of different protocols, are not
    comparable: never mix them (ValueError naming one file of each kind; a missing value counts
    as ``default``)."""
    kinds = df.groupby(df[column].fillna(default))["path"].first()
    if len(kinds) > 1:
        found = ", ".join(f"{kind} ({path})" for kind, path in kinds.items())
        raise ValueError(f"records {what} cannot share a report: {found}")


def check_comparable(df: pd.DataFrame) -> None:
    """Refuse records whose setting differs: protocol, shots, backbone or pretrained weights
    (:data:`SETTING`; columns absent from ``df`` are not checked, a missing value is its own kind
    "not recorded", protocol defaults to ``base2novel``). A 4-shot RN50 run and a 16-shot
    ViT-B/16 run measure different things, so no average or test may pool them. ValueError
    (one line) naming each setting found with one file of it."""
    columns = [c for c in SETTING if c in df.columns]
    if not columns:
        return
    filled = df[columns].astype(object).where(df[columns].notna(), "not recorded")
    if "protocol" in columns:
        filled["protocol"] = df["protocol"].fillna("base2novel")
    kinds = filled.apply(lambda r: ", ".join(f"{c}={r[c]}" for c in columns), axis=1)
    if kinds.nunique() < 2:
        return
    paths = df["path"] if "path" in df.columns else kinds.map(lambda _: "<no path>")
    found = "; ".join(f"{kind} ({paths[kinds == kind].iloc[0]})" for kind in dict.fromkeys(kinds))
    raise ValueError(f"records of different settings cannot share a report (report each setting "
                     f"separately): {found}")


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
    where = " and ".join(str(p) for p in first["path"]) if "path" in first.columns else "<no path>"
    raise ValueError(
        f"duplicate result record for method={brief(method)} dataset={brief(dataset)} seed={seed}: {where}")
