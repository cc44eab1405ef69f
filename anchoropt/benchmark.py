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
benchmark loses at most the cells in flight.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from anchoropt.config import PROTOCOLS, ConfigError, TrainConfig, make_config
from anchoropt.raytools import check_resources, ensure_ray

SUITE_KEYS = {"name", "protocol", "source", "datasets", "seeds", "config", "per_dataset", "methods", "baseline",
              "schedules", "search_dataset"}


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

    def finished(self) -> bool:
        """Every record of the cell is on disk (a killed cell wrote none or some: it reruns)."""
        return all(os.path.isfile(p) for p in self.record_paths.values())


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
    unknown = sorted(set(raw) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown suite key(s) {', '.join(unknown)}")
    for key in ("datasets", "seeds", "methods"):
        if not raw.get(key):
            raise ConfigError(f"{path}: '{key}' is missing or empty")
    protocol, source = raw.get("protocol", "base2novel"), raw.get("source")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: unknown protocol '{protocol}' (expected one of {', '.join(PROTOCOLS)})")
    if protocol == "cross_dataset" and (not source or source in raw["datasets"]):
        raise ConfigError(f"{path}: protocol cross_dataset needs 'source: <dataset>', not among the target datasets")
    if protocol == "base2novel" and source:
        raise ConfigError(f"{path}: 'source' applies to protocol cross_dataset only")
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


def check_data(cells: list[Cell]) -> None:
    """Read every dataset the cells train or score on once, before any trial starts.

    Raises:
        DataError: the first dataset that does not load (one line naming it and the file).
    """
    from anchoropt.data import build_dataset

    for root, dataset in sorted({(c.config["data_root"], d) for c in cells for d in c.record_paths}):
        build_dataset(root, dataset)


def run_cell(cell: Cell) -> dict:
    """Train one cell and write its records, each atomically (the method name is the suite's).
    Returns the run's record (cross-dataset: with ``acc_<dataset>`` for every scored dataset)."""
    from anchoropt.io import save_json
    from anchoropt.train import train

    record = train(make_config(cell.config))
    record.update(method=cell.method, objective=cell.tuning_objective)
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
    (more threads than CPUs oversubscribe the cores and slow small models many times)."""
    import torch

    torch.set_num_threads(threads)
    record = run_cell(Cell(**config["cell"]))
    tune.report({k: v for k, v in record["metrics"].items() if v is not None})


def run_benchmark(suite: Suite, results: str | Path, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                  max_concurrent: int | None = None, address: str | None = None,
                  num_cpus: int | None = None) -> dict[str, int]:
    """Run the suite's unfinished cells as Ray Tune trials; returns counts done / failed / skipped.

    Records of finished cells are never rewritten. Failed cells are reported by name and
    left without a record, so the next run retries them.

    Raises:
        ConfigError: a trial resource request no node of the Ray cluster meets (before any cell runs).
    """
    cells = plan_cells(suite, results)
    todo = [c for c in cells if not c.finished()]
    print(f"benchmark {suite.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to go")
    if not todo:
        return {"done": 0, "failed": 0, "skipped": len(cells)}
    check_data(todo)
    ensure_ray(address, num_cpus)
    check_resources(cpus_per_trial, gpus_per_trial)
    with tempfile.TemporaryDirectory(prefix="anchoropt-ray-") as storage:  # the records are the state
        tuner = tune.Tuner(
            tune.with_resources(partial(_cell_trainable, threads=max(1, round(cpus_per_trial))),
                                {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
            param_space={"cell": tune.grid_search([vars(c) for c in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage, name=suite.name, verbose=0,
                                      callbacks=[_Progress(len(todo))]),
        )
        failed = [r for r in tuner.fit() if r.error is not None]
    for r in failed:
        cell = r.config["cell"]
        print(f"failed cell {cell['method']} / {cell['dataset']} / seed {cell['seed']}: "
              f"{str(r.error).strip().splitlines()[-1]}")
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
        hm = (trial.last_result or {}).get("hm")
        self._line(trial, f"HM {hm:.2f}" if hm is not None else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")
