"""Benchmark suites: every cell as a Ray Tune trial, one record per (method, dataset, seed).

A suite (YAML, see ``benchmarks/``) names a protocol, datasets, seeds, a shared ``config`` of
TrainConfig keys and named ``methods``; a method is TrainConfig keys and/or
``config: <file>``, e.g. a search's ``best_config.yaml`` (``{dataset}`` in the path is
replaced per cell). Protocols (SPEC section 8):

- ``base2novel``: a cell is (method, dataset, seed).
- ``cross_dataset``: a cell is (method, seed): train on every class of ``source``, then score
  the source and each of ``datasets`` (the targets) on all their classes.

Each finished cell writes its records at once, atomically, to
``RESULTS/<method>/<dataset>/seed<k>.json``; re-running skips finished cells, so a killed
benchmark loses at most the cells in flight. A record counts as finished only when it reads
back whole and carries the cell's identity (:func:`cell_identity`: its resolved config, the
tuning provenance, the anchoropt version and a fingerprint of every dataset it uses): an
unreadable record (truncated, empty) is re-run, a record made with anything else refuses the
run with one line (never silently reused). One benchmark at a time holds the results folder
(``RESULTS/.benchmark.lock``); a second is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from ray import tune

import anchoropt
from anchoropt.config import PROTOCOLS, ConfigError, TrainConfig, make_config
from anchoropt.io import check_output_dir
from anchoropt.raytools import ensure_ray

#: config keys that say where a run reads or writes, not what it computes (the data itself is
#: fingerprinted instead of its folder)
NOT_IDENTITY = ("data_root", "cache_dir", "device")
LOCK_NAME = ".benchmark.lock"
INFRA_RETRIES = 3  # a trial whose actor or node died is re-run this many times before it counts as failed

_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True}
SUITE_SCHEMA = {  # JSON Schema of a suite file's values (types, counts); TrainConfig keys are checked by make_config
    "type": "object", "required": ["datasets", "seeds", "methods"],
    "properties": {
        "name": {"type": "string", "minLength": 1}, "protocol": {"type": "string"},
        "source": {"type": ["string", "null"], "minLength": 1}, "datasets": _NAMES,
        "seeds": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "uniqueItems": True},
        "config": {"type": ["object", "null"]},
        "per_dataset": {"type": ["object", "null"], "additionalProperties": {"type": ["object", "null"]}},
        "methods": {"type": "object", "minProperties": 1, "additionalProperties": {"type": ["object", "null"]}},
        "baseline": {"type": ["string", "null"]},
        "schedules": {**_NAMES, "type": ["array", "null"], "minItems": 2, "maxItems": 2},
        "search_dataset": {"type": ["string", "null"]},
    },
}
SUITE_KEYS = set(SUITE_SCHEMA["properties"])


@dataclass
class Cell:
    """One training run: its full config and where its records go (dataset -> path; one dataset
    under base2novel, the source and every target under cross_dataset)."""

    method: str
    dataset: str  # the trained dataset (the source under cross_dataset)
    seed: int
    config: dict[str, Any]
    record_paths: dict[str, str]
    tuning_objective: str  # objective of the search that produced the config, or "untuned"
    identity: dict[str, Any] = field(default_factory=dict)  # see cell_identity; stored in every record

    def state(self) -> tuple[str, str]:
        """``("todo", "")``: a record is missing (a killed cell wrote none or some: it reruns);
        ``("broken", why)``: a record does not read back whole (it reruns); ``("changed", what)``:
        a record was made with another identity; ``("done", "")``: every record is this cell's."""
        for path in self.record_paths.values():
            if not os.path.exists(path):
                return "todo", ""
        for path in self.record_paths.values():
            try:
                record = json.loads(Path(path).read_bytes())
            except (OSError, ValueError) as err:  # 0-byte, truncated, not UTF-8, a folder
                return "broken", f"{path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty'}"
            if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
                return "broken", f"{path}: not a result record"
            if record.get("cell_identity") != self.identity:
                return "changed", f"{path}: {identity_change(record.get('cell_identity'), self.identity)}"
        return "done", ""


@dataclass
class Suite:
    """A parsed suite file. ``methods`` maps a method name to its TrainConfig values."""

    name: str
    path: Path
    datasets: list[str]  # under cross_dataset: the targets
    seeds: list[int]
    config: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str = "base2novel"
    source: str | None = None  # cross_dataset: the dataset trained on
    baseline: str | None = None
    schedules: tuple[str, str] | None = None
    search_dataset: str | None = None  # where ``anchoropt run`` tunes the schedules


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read a suite YAML; ``overrides`` (TrainConfig keys) replace the shared ``config``.

    Raises:
        ConfigError: unknown top-level or TrainConfig key, missing methods/datasets/seeds,
            unknown protocol, a cross-dataset suite without ``source`` (or with the source among
            its targets), or a method file that does not exist (naming the suite file).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"suite file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"suite file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite is a mapping of suite keys, not a {type(raw).__name__}")
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown suite key(s) {', '.join(unknown)}")
    check_schema(raw, SUITE_SCHEMA, path)
    protocol, source = raw.get("protocol", "base2novel"), raw.get("source")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: unknown protocol '{protocol}' (expected one of {', '.join(PROTOCOLS)})")
    if protocol == "cross_dataset" and (not source or source in raw["datasets"]):
        raise ConfigError(f"{path}: protocol cross_dataset needs 'source: <dataset>', not among the target datasets")
    if protocol == "base2novel" and source:
        raise ConfigError(f"{path}: 'source' applies to protocol cross_dataset only")
    for name in (raw.get("per_dataset") or {}):
        if name not in [*raw["datasets"], source]:
            raise ConfigError(f"{path}: per_dataset entry '{name}' is not one of the suite's datasets")
    if raw.get("search_dataset") not in (None, *raw["datasets"]):
        raise ConfigError(f"{path}: search_dataset '{raw['search_dataset']}' is not one of the suite's datasets")
    shared = {**(raw.get("config") or {}), **(overrides or {})}
    make_config(shared, source=f"{path} config")
    methods = {name: dict(spec or {}) for name, spec in raw["methods"].items()}
    schedules = tuple(raw["schedules"]) if raw.get("schedules") else None
    for name in [raw.get("baseline"), *(schedules or ())]:
        if name is not None and name not in methods:
            raise ConfigError(f"{path}: '{name}' is not one of the suite's methods")
    return Suite(raw.get("name", path.stem), path, list(raw["datasets"]), [int(s) for s in raw["seeds"]],
                 shared, methods, raw.get("per_dataset") or {}, protocol, source, raw.get("baseline"), schedules,
                 raw.get("search_dataset"))


def check_schema(raw: Any, schema: dict, path: str | Path) -> None:
    """Validate ``raw`` against a JSON Schema (``jsonschema``); raises ConfigError naming the file,
    the key path and the first (most relevant) fault."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise ConfigError(f"{path}: {where}: {error.message}")


def method_config(suite: Suite, method: str, dataset: str) -> tuple[dict[str, Any], str]:
    """TrainConfig values of one method on one dataset, and the objective that tuned them.

    Order (later wins): suite ``config``, its ``per_dataset`` entry, the method's ``config:``
    file, the method's own keys.
    The objective of the search that wrote the file (its ``search.json``) is recorded as
    provenance (``given`` for another file, ``untuned`` without one); cells are scored on test.
    """
    spec = dict(suite.methods[method])
    values: dict[str, Any] = {**suite.config, **suite.per_dataset.get(dataset, {})}
    tuning = "untuned"
    if "config" in spec:
        file = Path(str(spec.pop("config")).format(dataset=dataset))
        file = file if file.is_absolute() else suite.path.parent / file
        if not file.is_file():
            raise ConfigError(f"{suite.path}: method '{method}' config file not found: {file}")
        tuned = yaml.safe_load(file.read_text()) or {}
        search = file.parent / "search.json"  # present when the file is a search's best config
        tuning = json.loads(search.read_text())["objective"] if search.is_file() else "given"
        values.update({k: v for k, v in tuned.items() if k not in ("dataset", "seed", "data_root", "cache_dir",
                                                                     "device", "objective")})
    values.update(spec)
    values.update(dataset=dataset, objective="test", protocol=suite.protocol)
    if suite.protocol == "cross_dataset":
        values["targets"] = ",".join(suite.datasets)
    return values, tuning


def plan_cells(suite: Suite, results: str | Path) -> list[Cell]:
    """Every cell of the suite, with its validated config (raises ConfigError naming the method)."""
    results = Path(results).resolve()
    trained = [suite.source] if suite.protocol == "cross_dataset" else suite.datasets
    cells = []
    for method in suite.methods:
        for dataset in trained:
            values, tuning = method_config(suite, method, dataset)
            scored = [dataset, *suite.datasets] if suite.protocol == "cross_dataset" else [dataset]
            for seed in suite.seeds:
                cfg = make_config({**values, "seed": seed}, source=f"{suite.path} method '{method}'")
                paths = {d: str(results / method / d / f"seed{seed}.json") for d in scored}
                cells.append(Cell(method, dataset, seed, _absolute_paths(cfg).to_dict(), paths, tuning))
    return cells


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Ray workers run in other folders: make path-valued keys absolute."""
    for key in ("data_root", "cache_dir", "descriptions", "descriptions_dir"):
        value = getattr(cfg, key)
        if value:
            setattr(cfg, key, str(Path(value).expanduser().resolve()))
    return cfg


def cell_identity(cell: Cell, fingerprints: dict[tuple[str, str], str]) -> dict[str, Any]:
    """What a cell's result depends on: its config (less :data:`NOT_IDENTITY`), the method name,
    the objective that tuned the config, the anchoropt version, and the fingerprint of every
    dataset it trains or scores on (``fingerprints[(data_root, dataset)]``)."""
    return {"method": cell.method, "tuning": cell.tuning_objective, "anchoropt": anchoropt.__version__,
            "config": {k: v for k, v in cell.config.items() if k not in NOT_IDENTITY},
            "data": {d: fingerprints[(cell.config["data_root"], d)] for d in cell.record_paths}}


def identity_change(old: dict | None, new: dict) -> str:
    """One phrase saying how a stored cell identity differs from ``new`` (``epochs 5 -> 7``)."""
    if not isinstance(old, dict):
        return "written without a cell identity (another anchoropt version or by hand)"
    changes = [f"{k} {old.get('config', {}).get(k)!r} -> {v!r}" for k, v in new["config"].items()
               if old.get("config", {}).get(k) != v]
    changes += [f"{part} {old.get(part)!r} -> {new[part]!r}" for part in ("method", "tuning", "anchoropt")
                if old.get(part) != new[part]]
    changes += [f"dataset {d} has other files or classes" for d, fp in new["data"].items()
                if (old.get("data") or {}).get(d) != fp]
    return ", ".join(changes) or "other identity"


def dataset_fingerprint(data) -> str:
    """SHA-1 of a dataset's class names and its train/val/test (image path under the dataset
    folder, label) lists: equal for the same data in another folder, different for any edit."""
    def rel(item) -> str:
        return os.path.relpath(item.impath, data.root)

    listing = [data.classnames] + [[(rel(d), d.label) for d in part] for part in (data.train, data.val, data.test)]
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


def check_data(cells: list[Cell]) -> dict[tuple[str, str], str]:
    """Read every dataset the cells train or score on once, before any trial starts; prints a
    warning where ``shots`` exceeds what a class has. Returns ``{(data_root, dataset): fingerprint}``.

    Raises:
        DataError: the first dataset that does not load (one line naming it and the file).
    """
    from anchoropt.data import build_dataset
    from anchoropt.data.fewshot import shots_shortfall

    fingerprints = {}
    for root, dataset in sorted({(c.config["data_root"], d) for c in cells for d in c.record_paths}):
        data = build_dataset(root, dataset)
        fingerprints[(root, dataset)] = dataset_fingerprint(data)
        for shots in sorted({c.config["shots"] for c in cells if c.dataset == dataset}):
            if (message := shots_shortfall(data, shots)) is not None:
                print(f"warning: {message}")
    return fingerprints


def check_outputs(cells: list[Cell], results: Path) -> None:
    """Every folder the benchmark writes (results, each cache_dir) is one and is writable, before any work.

    Raises:
        OutputError: one line naming the flag or key and the path.
    """
    check_output_dir(results, "--results")
    for cache in sorted({c.config["cache_dir"] for c in cells}):
        check_output_dir(cache, "cache_dir")


def run_cell(cell: Cell) -> dict:
    """Train one cell and write its records, each atomically (the method name is the suite's).
    Returns the run's record (cross-dataset: with ``acc_<dataset>`` for every scored dataset)."""
    from anchoropt.io import save_json
    from anchoropt.train import train

    record = train(make_config(cell.config))
    record.update(method=cell.method, objective=cell.tuning_objective, cell_identity=cell.identity)
    if record["protocol"] == "base2novel":
        save_json(record, cell.record_paths[cell.dataset])
        return record
    for dataset, path in cell.record_paths.items():
        save_json(dataset_record(record, dataset), path)
    return record


def dataset_record(record: dict, dataset: str) -> dict:
    """The record of one scored dataset of a cross-dataset run: ``dataset`` set to it, ``role``
    ``source`` or ``target``, ``source`` named, and metrics ``acc`` (and ``acc_anchor``, the
    anchor prompt alone) in percent (docs/INTERFACES.md)."""
    source = record["config"]["dataset"]
    metrics = {"acc": record["metrics"][f"acc_{dataset}"]}
    if f"acc_anchor_{dataset}" in record["metrics"]:
        metrics["acc_anchor"] = record["metrics"][f"acc_anchor_{dataset}"]
    return {**record, "dataset": dataset, "source": source, "role": "source" if dataset == source else "target",
            "metrics": metrics}


def _cell_trainable(config: dict, threads: int = 1) -> None:
    """Ray Tune trainable: one cell per trial, with as many torch threads as the trial has CPUs
    (more threads than CPUs oversubscribe the cores and slow small models many times).

    A fault of the cell itself (bad data, NaN loss, a bug) is reported as ``cell_error`` (one
    line) and ends the trial normally; only a fault of the infrastructure (the actor or its node
    died) fails the trial, which Tune then re-runs (:data:`INFRA_RETRIES`).
    """
    import torch
    from ray.exceptions import RayError

    torch.set_num_threads(threads)
    try:
        record = run_cell(Cell(**config["cell"]))
    except RayError:
        raise
    except Exception as err:  # noqa: BLE001 (reported, with its type, as the cell's failure)
        tune.report({"cell_error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err) else ''}"})
        return
    tune.report({k: v for k, v in record["metrics"].items() if v is not None})


class BenchmarkError(ValueError):
    """A benchmark that must not start: its results folder is in use, or holds records of other cells."""


def run_benchmark(suite: Suite, results: str | Path, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                  max_concurrent: int | None = None, address: str | None = None,
                  num_cpus: int | None = None) -> dict[str, int]:
    """Run the suite's unfinished cells as Ray Tune trials; returns counts done / failed / skipped.

    Before any work: every output folder is checked, the results folder is locked, every dataset
    is read and every record on disk is checked against its cell's identity. Records of finished
    cells are never rewritten; unreadable records are re-run. Failed cells are reported by name
    and left without a record, so the next run retries them; a trial lost with its actor or node
    is re-run (:data:`INFRA_RETRIES` times).

    Raises:
        BenchmarkError: another process holds the results folder, or records there were made with
            another config, code or data version (one line naming a record and what changed).
        OutputError, DataError, ConfigError, RayConnectError: one line, before any training.
    """
    from filelock import FileLock, Timeout

    results = Path(results).expanduser().resolve()
    cells = plan_cells(suite, results)
    check_outputs(cells, results)
    fingerprints = check_data(cells)
    results.mkdir(parents=True, exist_ok=True)
    lock = FileLock(results / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BenchmarkError(f"--results {results} is in use by another benchmark (lock {results / LOCK_NAME}): "
                             "wait for it to finish, or use another --results folder") from None
    try:
        return _run_cells(suite, cells, fingerprints, results, cpus_per_trial, gpus_per_trial, max_concurrent,
                          address, num_cpus)
    finally:
        lock.release()


def _run_cells(suite: Suite, cells: list[Cell], fingerprints: dict, results: Path, cpus_per_trial: float,
               gpus_per_trial: float, max_concurrent: int | None, address: str | None,
               num_cpus: int | None) -> dict[str, int]:
    for cell in cells:
        cell.identity = cell_identity(cell, fingerprints)
    states = [(cell, *cell.state()) for cell in cells]
    changed = [why for _, state, why in states if state == "changed"]
    if changed:
        raise BenchmarkError(f"{len(changed)} record(s) under {results} were made with another config, code or data "
                             f"(e.g. {changed[0]}): use another --results folder, or delete those records to re-run")
    broken = [why for _, state, why in states if state == "broken"]
    if broken:
        print(f"re-running {len(broken)} cell(s) whose record does not read back (e.g. {broken[0]})")
    todo = [cell for cell, state, _ in states if state != "done"]
    print(f"benchmark {suite.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to go")
    if not todo:
        return {"done": 0, "failed": 0, "skipped": len(cells)}
    ensure_ray(address, num_cpus)
    with tempfile.TemporaryDirectory(prefix="anchoropt-ray-") as storage:  # the records are the state
        tuner = tune.Tuner(
            tune.with_resources(partial(_cell_trainable, threads=max(1, round(cpus_per_trial))),
                                {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
            param_space={"cell": tune.grid_search([vars(c) for c in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage, name=suite.name, verbose=0,
                                      callbacks=[_Progress(len(todo))],
                                      failure_config=tune.FailureConfig(max_failures=INFRA_RETRIES)),
        )
        grid = tuner.fit()
    failed = []
    for r in grid:
        error = (r.metrics or {}).get("cell_error") or (r.error is not None and
                                                        str(r.error).strip().splitlines()[-1])
        if error:
            cell = r.config["cell"]
            failed.append(cell)
            print(f"failed cell {cell['method']} / {cell['dataset']} / seed {cell['seed']}: {error}")
    return {"done": len(todo) - len(failed), "failed": len(failed), "skipped": len(cells) - len(todo)}


class _Progress(tune.Callback):
    """Prints one line per finished (or failed) cell: cells done and to go."""

    def __init__(self, total: int):
        self.total, self.finished = total, 0

    def _line(self, trial, outcome: str) -> None:
        self.finished += 1
        cell = trial.config["cell"]
        print(f"[{self.finished}/{self.total}] {cell['method']} / {cell['dataset']} / seed {cell['seed']}: "
              f"{outcome}; {self.total - self.finished} to go", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        hm = result.get("hm")
        self._line(trial, "FAILED" if "cell_error" in result else f"HM {hm:.2f}" if hm is not None else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")
