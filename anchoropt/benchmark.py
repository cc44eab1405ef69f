"""Benchmark suites: every cell as a Ray Tune trial, one record per (method, dataset, seed).

A suite (:mod:`anchoropt.suite`) names a protocol, datasets, seeds and methods. Protocols
(SPEC section 8):

- ``base2novel``: a cell is (method, dataset, seed).
- ``cross_dataset``: a cell is (method, seed): train on every class of ``source``, then score
  the source and each of ``datasets`` (the targets) on all their classes.

Each finished cell writes its learned tensors (``seed<k>.prompts.pt``) and then its records,
each atomically, to ``RESULTS/<method>/<dataset>/seed<k>.json``; re-running skips finished cells,
so a killed benchmark loses at most the cells in flight. A record counts as finished only when it
reads back whole and carries the cell's identity (:func:`cell_identity`: its resolved config, the
tuning provenance, the anchoropt version and a fingerprint of every dataset it uses): an
unreadable record (truncated, empty) is re-run, a record made with anything else refuses the run
with one line (never silently reused). One benchmark at a time holds the results folder
(``RESULTS/.benchmark.lock``); a second is refused. A trial lost with its actor or node is re-run
(:data:`INFRA_RETRIES`); a fault of the cell itself fails the cell, and the next run retries it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection

import yaml

import anchoropt
from anchoropt.config import make_config
from anchoropt.errors import ConfigError, brief
from anchoropt.io import check_output_dir, write_text
from anchoropt.paths import inside
from anchoropt.suite import Suite, method_values

if TYPE_CHECKING:  # Ray is imported where a benchmark runs, so the report can read RESULTS without it
    from anchoropt.raytools import Resources

#: config keys that say where a run reads or writes, not what it computes (the data itself is
#: fingerprinted instead of its folder)
NOT_IDENTITY = ("data_root", "cache_dir", "device")
LOCK_NAME = ".benchmark.lock"
STATE_NAME = "benchmark.yaml"  # what a re-run and the report keep: MLflow target, suite files (read_state)
INFRA_RETRIES = 3  # a trial whose actor or node died is re-run this many times before it counts as failed


@dataclass
class Cell:
    """One training run: its full config and where its records go (dataset -> path; one dataset
    under base2novel, the source and every target under cross_dataset)."""

    method: str
    dataset: str  # the trained dataset (the source under cross_dataset)
    seed: int
    config: dict[str, Any]
    record_paths: dict[str, str]
    tuning: str  # what tuned the config (anchoropt.suite.method_values)
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


def plan_cells(suite: Suite, results: str | Path) -> list[Cell]:
    """Every cell of the suite, with its validated config scored on test (raises ConfigError naming
    the method)."""
    results = Path(results).resolve()
    cells = []
    for method in suite.methods:
        for dataset in suite.trained_datasets:
            values, tuning = method_values(suite, method, dataset)
            scored = [dataset, *suite.datasets] if suite.protocol == "cross_dataset" else [dataset]
            for seed in suite.seeds:
                cfg = make_config({**values, "seed": seed, "eval_split": "test"},
                                  source=f"{suite.path} method '{method}'")
                paths = {d: str(inside(results, Path(method) / d / f"seed{seed}.json", f"method '{method}' record"))
                         for d in scored}
                cells.append(Cell(method, dataset, seed, cfg.to_dict(), paths, tuning))
    return cells


def cell_identity(cell: Cell, fingerprints: dict[tuple[str, str], str]) -> dict[str, Any]:
    """What a cell's result depends on: its config (less :data:`NOT_IDENTITY`), the method name,
    what tuned the config, the anchoropt version, and the fingerprint of every dataset it trains
    or scores on (``fingerprints[(data_root, dataset)]``, :func:`check_data`); with ``anchors=<file>``,
    the file's sha256 too (the path alone would let edited anchors reuse a stale result)."""
    identity = {"method": cell.method, "tuning": cell.tuning, "anchoropt": anchoropt.__version__,
                "config": {k: v for k, v in cell.config.items() if k not in NOT_IDENTITY},
                "data": {d: fingerprints[(cell.config["data_root"], d)] for d in cell.record_paths}}
    if cell.config.get("anchors"):
        from anchoropt.anchor_file import file_sha256  # imports torch, which the benchmark driver need not
        identity["anchors_sha256"] = file_sha256(cell.config["anchors"])
    return identity


def identity_change(old: dict | None, new: dict) -> str:
    """One phrase saying how a stored cell identity differs from ``new`` (``epochs 5 -> 7``)."""
    if not isinstance(old, dict):
        return "written without a cell identity (another anchoropt version, or by hand)"
    stored = old.get("config") or {}
    changes = [f"{k} {brief(stored.get(k))} -> {brief(v)}" for k, v in new["config"].items() if stored.get(k) != v]
    changes += [f"{part} {brief(old.get(part))} -> {brief(new[part])}" for part in ("method", "tuning", "anchoropt")
                if old.get(part) != new[part]]
    changes += [f"dataset {d} has other files or classes" for d, fp in new["data"].items()
                if (old.get("data") or {}).get(d) != fp]
    if old.get("anchors_sha256") != new.get("anchors_sha256"):
        changes.append(f"anchors file {brief(new['config'].get('anchors'))} has other contents")
    return ", ".join(changes) or "another identity"


def dataset_fingerprint(data) -> str:
    """SHA-1 of a dataset's class names and its train/val/test (image path under the dataset
    folder, label) lists: equal for the same data in another folder, different for any edit."""
    listing = [data.classnames] + [[(os.path.relpath(d.impath, data.root), d.label) for d in part]
                                   for part in (data.train, data.val, data.test)]
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


class BenchmarkError(ConfigError):
    """A benchmark that must not start: its results folder is in use, or holds records of other cells."""


def cell_states(suite: Suite, results: str | Path, pending: Collection[str] = ()) -> list[tuple[Cell, str, str]]:
    """Every cell of the suite with its state (:meth:`Cell.state`) and why; reads, writes nothing.

    Checks every output location and reads every dataset first (the planning half of
    :func:`run_benchmark`, without its lock or Ray), but those in ``pending`` (not made yet: their
    cells are ``("todo", "dataset to be made first")``).

    Raises:
        OutputError, DataError, ConfigError: one line, naming the path, dataset or key.
    """
    results = Path(results).expanduser().resolve()
    cells = plan_cells(suite, results)
    check_outputs(cells, results)
    ready = [c for c in cells if not set(c.record_paths) & set(pending)]
    fingerprints = check_data(ready)
    for cell in ready:
        cell.identity = cell_identity(cell, fingerprints)
    ready_ids = {id(c) for c in ready}
    return [(cell, *cell.state()) if id(cell) in ready_ids else (cell, "todo", "dataset to be made first")
            for cell in cells]


def todo_cells(states: list[tuple[Cell, str, str]], results: Path) -> list[Cell]:
    """The cells to run: missing and unreadable records (saying so for the latter).

    Raises:
        BenchmarkError: a record was made with another identity (one line: how many, one example, the fix).
    """
    changed = [why for _, state, why in states if state == "changed"]
    if changed:
        raise BenchmarkError(f"{len(changed)} record(s) under {results} were made with another config, code or data "
                             f"(e.g. {changed[0]}): use another --results folder, or delete those records to re-run")
    broken = [why for _, state, why in states if state == "broken"]
    if broken:
        print(f"re-running {len(broken)} cell(s) whose record does not read back (e.g. {broken[0]})")
    return [cell for cell, state, _ in states if state != "done"]


def cell_name(cell: dict[str, Any]) -> str:
    """``<method>.<dataset>.seed<k>``: the cell's Ray trial, TensorBoard and MLflow run name."""
    return f"{cell['method']}.{cell['dataset']}.seed{cell['seed']}"


def describe_plan(suite: Suite, results: str | Path, pending: Collection[str] = ()) -> str:
    """``benchmark --dry-run``: one line per cell, done (its records on disk) or to run; nothing is written.
    ``pending``: datasets not on disk yet that the caller makes before running (``anchoropt run``'s toy
    data): their cells are to run, their data unread."""
    states = cell_states(suite, results, pending)
    done = sum(state == "done" for _, state, _ in states)
    lines = [f"dry run: benchmark {suite.name} into {Path(results).resolve()}: {len(states)} cells, "
             f"{done} done, {len(states) - done} to run"]
    for cell, state, why in states:
        where = " ".join(cell.record_paths.values()) if state == "done" else why
        lines.append(f"  {'done  ' if state == 'done' else 'to run' if state == 'todo' else state}  "
                     f"{cell.method} / {cell.dataset} / seed {cell.seed}  {where}".rstrip())
    return "\n".join(lines)


def run_cell(cell: Cell, report=None) -> dict:
    """Train one cell and write its records, each atomically (the method name is the suite's), after
    the run's learned tensors, ``prompts_path(cell)`` (the report's position heatmaps read them).
    Returns the run's record (cross-dataset: with ``acc_<dataset>`` for every scored dataset);
    ``report`` gets each epoch's metrics (:func:`anchoropt.train.train`)."""
    import torch

    from anchoropt.io import save_json, save_tensors
    from anchoropt.records import dataset_records, relabel
    from anchoropt.train import train

    with tempfile.TemporaryDirectory(prefix="anchoropt-cell-") as run_dir:  # outside RESULTS: no stray record
        record = relabel(train(make_config(cell.config), out_dir=run_dir, report=report), cell.method, cell.tuning)
        save_tensors(torch.load(Path(run_dir) / "prompts.pt", weights_only=True), prompts_path(cell))
    record["cell_identity"] = cell.identity  # what the next run compares (Cell.state)
    for dataset, rec in dataset_records(record).items():
        save_json(rec, cell.record_paths[dataset])
    return record


def prompts_path(cell: Cell) -> Path:
    """Where a cell's learned tensors go: beside the trained dataset's record, ``seed<k>.prompts.pt``
    (``anchoropt.report.positions.prompts_file`` finds them)."""
    return Path(cell.record_paths[cell.dataset]).with_suffix(".prompts.pt")


def _cell_trial(config: dict) -> None:
    """One cell per Ray Tune trial (run by :func:`anchoropt.raytools.trainable`).

    A fault of the cell itself (bad data, NaN loss, a bug) is reported as ``cell_error`` (one
    line) and ends the trial normally; only a fault of the infrastructure (the actor or its node
    died) fails the trial, which Tune then re-runs (:data:`INFRA_RETRIES`).
    """
    from ray import tune
    from ray.exceptions import RayError

    try:
        record = run_cell(Cell(**config["cell"]), report=lambda m: tune.report(_numbers(m)))  # per epoch
    except RayError:
        raise
    except Exception as err:  # noqa: BLE001 (reported, with its type, as the cell's failure)
        message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        tune.report({"cell_error": f"{type(err).__name__}: {message}"})
        return
    tune.report({k: v for k, v in record["metrics"].items() if v is not None})


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cell_outcome(result: dict) -> tuple[str, str | None]:
    """A cell trial's outcome from its last report: ``failed`` (with the cell's error) or ``complete``."""
    if "cell_error" in result:
        return "failed", result["cell_error"]
    if not any(k.startswith("acc") for k in result):
        return "failed", "the cell reported no scores"
    return "complete", None


def read_state(results: str | Path) -> dict[str, Any]:
    """``RESULTS/benchmark.yaml``, what a re-run and the report keep of earlier runs ({} before the
    first): ``mlflow`` (the tracking target, None for none) and ``suites`` (the suite files that
    wrote cells here, in first-run order). Raises ConfigError naming the file when it does not read
    (``yamlio.read_yaml``)."""
    from anchoropt.yamlio import read_yaml

    path = Path(results) / STATE_NAME
    return read_yaml(path, "benchmark state") if path.is_file() else {}


def choose_tracking(results: Path, suite: Suite, mlflow: str | bool | None):
    """The benchmark's MLflow target (given, as stored in ``RESULTS/benchmark.yaml``, or off),
    checked before Ray starts; None for none.

    Raises:
        TrackingError: the store cannot be logged to (one line).
    """
    from anchoropt.tracking import check_mlflow, choose_target

    target = choose_target(mlflow, read_state(results).get("mlflow"), results, f"benchmark {suite.name}")
    if target is not None:
        check_mlflow(target)
    return target


def run_benchmark(suite: Suite, results: str | Path, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                  max_concurrent: int | None = None, address: str | None = None,
                  num_cpus: int | None = None, verbose: int = 0, mlflow: str | bool | None = None) -> dict[str, int]:
    """Run the suite's unfinished cells as Ray Tune trials; returns counts done / failed / skipped.

    Before any work: every output folder is checked, every dataset read, the results folder
    locked and every record on disk checked against its cell's identity (:func:`cell_states`).
    Records of finished cells are never rewritten; unreadable records are re-run. Failed cells are
    reported by name and left without a record, so the next run retries them; a trial lost with
    its actor or node is re-run (:data:`INFRA_RETRIES`). ``verbose`` 0 shows one progress bar
    (:mod:`anchoropt.progress`), 1 or 2 Ray Tune's own output; every cell's per-epoch metrics go
    to ``results/tensorboard/<cell>`` and, with ``mlflow`` (a tracking URI), to MLflow
    (:mod:`anchoropt.tracking`); the URI is stored in ``results/benchmark.yaml``, so a re-run given
    None keeps logging there (False: no MLflow from now on).

    Raises:
        BenchmarkError: another process holds the results folder, or records there were made with
            another config, code or data version (one line naming a record and what changed).
        OutputError, DataError, ConfigError, RayConnectError: one line, before any training (ConfigError
            also for a trial resource request no node of the Ray cluster meets).
        TrackingError: the MLflow store cannot be logged to (before Ray starts).
    """
    from filelock import FileLock, Timeout

    from anchoropt.raytools import Resources

    resources = Resources(cpus_per_trial, gpus_per_trial)  # bad values fail before any work
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    results = Path(results).expanduser().resolve()
    states = cell_states(suite, results)
    tracking = choose_tracking(results, suite, mlflow)
    results.mkdir(parents=True, exist_ok=True)
    lock = FileLock(results / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BenchmarkError(f"--results {results} is in use by another benchmark (lock {results / LOCK_NAME}): "
                             "wait for it to finish, or use another --results folder") from None
    try:
        states = [(cell, *cell.state()) for cell, _, _ in states]  # as the lock holder sees them
        todo = todo_cells(states, results)
        print(f"benchmark {suite.name}: {len(states)} cells, {len(states) - len(todo)} done, {len(todo)} to go")
        suites = list(dict.fromkeys([*read_state(results).get("suites", []), str(suite.path)]))
        write_text(yaml.safe_dump({"mlflow": tracking.to_dict() if tracking else None, "suites": suites}),
                   results / STATE_NAME)  # also on a no-op rerun: it records the suite of older results
        if not todo:
            return {"done": 0, "failed": 0, "skipped": len(states)}
        failed = _run_trials(suite, results, todo, len(states), resources, max_concurrent, address, num_cpus,
                             verbose, tracking)
        return {"done": len(todo) - failed, "failed": failed, "skipped": len(states) - len(todo)}
    finally:
        lock.release()


def _run_trials(suite: Suite, results: Path, todo: list[Cell], total: int, resources: Resources,
                max_concurrent: int | None, address: str | None, num_cpus: int | None, verbose: int,
                tracking) -> int:
    """Run ``todo`` as Ray Tune trials; prints each failed cell; returns how many failed."""
    from ray import tune

    from anchoropt.progress import TrialProgress, ray_output
    from anchoropt.raytools import check_resources, ensure_ray, trainable
    from anchoropt.tracking import closing_trackers, tracking_callbacks, trial_namer

    trackers = tracking_callbacks(results, tracking, params_of=lambda config: config["cell"]["config"],
                                  outcome_of=cell_outcome,
                                  tags_of=lambda config: {k: str(config["cell"][k])
                                                          for k in ("method", "dataset", "seed", "tuning")})
    callbacks = list(trackers)
    if not verbose:
        callbacks.append(TrialProgress(f"benchmark {suite.name}", total, done=total - len(todo),
                                       metric="hm" if suite.protocol == "base2novel" else None, unit="cells",
                                       label=lambda t: cell_name(t.config["cell"]), error_key="cell_error"))
    with ray_output(verbose), tempfile.TemporaryDirectory(prefix="anchoropt-ray-") as storage, \
            closing_trackers(trackers):  # records: the state
        ensure_ray(address, num_cpus, verbose=verbose)
        check_resources(resources)
        tuner = tune.Tuner(
            trainable(_cell_trial, resources),
            param_space={"cell": tune.grid_search([vars(c) for c in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                        trial_name_creator=trial_namer(lambda c: cell_name(c["cell"]))),
            run_config=tune.RunConfig(storage_path=storage, name=suite.name, verbose=verbose, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=INFRA_RETRIES)),
        )
        grid = tuner.fit()
    failed = 0
    for r in grid:
        error = (r.metrics or {}).get("cell_error") or (r.error is not None and str(r.error).strip().splitlines()[-1])
        if error:
            cell = r.config["cell"]
            failed += 1
            print(f"failed cell {cell['method']} / {cell['dataset']} / seed {cell['seed']}: {error}")
    return failed
