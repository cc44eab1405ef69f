"""Benchmark suites: every cell as a Ray Tune trial, one record per (method, dataset, seed).

A suite (:mod:`anchoropt.suite`) names a protocol, datasets, seeds and methods. Protocols
(SPEC section 8):

- ``base2novel``: a cell is (method, dataset, seed).
- ``cross_dataset``: a cell is (method, seed): train on every class of ``source``, then score
  the source and each of ``datasets`` (the targets) on all their classes.

Each finished cell writes its records at once, atomically, to
``RESULTS/<method>/<dataset>/seed<k>.json``; re-running skips finished cells, so a killed
benchmark loses at most the cells in flight.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from anchoropt.config import make_config
from anchoropt.raytools import Resources, check_resources, ensure_ray, trainable
from anchoropt.suite import Suite, method_values


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

    def finished(self) -> bool:
        """Every record of the cell is on disk (a killed cell wrote none or some: it reruns)."""
        return all(os.path.isfile(p) for p in self.record_paths.values())


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
                paths = {d: str(results / method / d / f"seed{seed}.json") for d in scored}
                cells.append(Cell(method, dataset, seed, cfg.to_dict(), paths, tuning))
    return cells


def check_data(cells: list[Cell]) -> None:
    """Read every dataset the cells train or score on once, before any trial starts.

    Raises:
        DataError: the first dataset that does not load (one line naming it and the file).
    """
    from anchoropt.data import build_dataset

    for root, dataset in sorted({(c.config["data_root"], d) for c in cells for d in c.record_paths}):
        build_dataset(root, dataset)


def cell_name(cell: dict[str, Any]) -> str:
    """``<method>.<dataset>.seed<k>``: the cell's Ray trial, TensorBoard and MLflow run name."""
    return f"{cell['method']}.{cell['dataset']}.seed{cell['seed']}"


def describe_plan(suite: Suite, results: str | Path) -> str:
    """``benchmark --dry-run``: one line per cell, done (its records on disk) or to run; nothing is written."""
    cells = plan_cells(suite, results)
    done = [c.finished() for c in cells]
    lines = [f"dry run: benchmark {suite.name} into {Path(results).resolve()}: {len(cells)} cells, "
             f"{sum(done)} done, {len(cells) - sum(done)} to run"]
    for cell, finished in zip(cells, done):
        lines.append(f"  {'done  ' if finished else 'to run'}  {cell.method} / {cell.dataset} / seed {cell.seed}"
                     f"  {' '.join(cell.record_paths.values()) if finished else ''}".rstrip())
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
    for dataset, rec in dataset_records(record).items():
        save_json(rec, cell.record_paths[dataset])
    return record


def prompts_path(cell: Cell) -> Path:
    """Where a cell's learned tensors go: beside the trained dataset's record, ``seed<k>.prompts.pt``
    (``anchoropt.report.positions.prompts_file`` finds them)."""
    return Path(cell.record_paths[cell.dataset]).with_suffix(".prompts.pt")


def _cell_trial(config: dict) -> None:
    """One cell per Ray Tune trial (run by :func:`anchoropt.raytools.trainable`)."""
    record = run_cell(Cell(**config["cell"]), report=lambda m: tune.report(_numbers(m)))  # per epoch
    tune.report({k: v for k, v in record["metrics"].items() if v is not None})


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_benchmark(suite: Suite, results: str | Path, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                  max_concurrent: int | None = None, address: str | None = None,
                  num_cpus: int | None = None, verbose: int = 0, mlflow: str | None = None) -> dict[str, int]:
    """Run the suite's unfinished cells as Ray Tune trials; returns counts done / failed / skipped.

    Records of finished cells are never rewritten. Failed cells are reported by name and
    left without a record, so the next run retries them. ``verbose`` 0 shows one progress bar
    (:mod:`anchoropt.progress`), 1 or 2 Ray Tune's own output; every cell's per-epoch metrics go
    to ``results/tensorboard/<cell>`` and, with ``mlflow`` (a tracking URI), to MLflow
    (:mod:`anchoropt.tracking`).

    Raises:
        ConfigError: a trial resource request no node of the Ray cluster meets (before any cell runs).
    """
    from anchoropt.progress import TrialProgress, ray_output
    from anchoropt.tracking import tracking_callbacks, trial_namer

    resources = Resources(cpus_per_trial, gpus_per_trial)  # bad values fail before any work
    cells = plan_cells(suite, results)
    todo = [c for c in cells if not c.finished()]
    print(f"benchmark {suite.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to go")
    if not todo:
        return {"done": 0, "failed": 0, "skipped": len(cells)}
    check_data(todo)
    callbacks = tracking_callbacks(results, mlflow, experiment=suite.name)
    if not verbose:
        callbacks.append(TrialProgress(f"benchmark {suite.name}", len(cells), done=len(cells) - len(todo),
                                       metric="hm" if suite.protocol == "base2novel" else None, unit="cells",
                                       label=lambda t: cell_name(t.config["cell"]), error_key="cell_error"))
    with ray_output(verbose), tempfile.TemporaryDirectory(prefix="anchoropt-ray-") as storage:  # records: the state
        ensure_ray(address, num_cpus, verbose=verbose)
        check_resources(resources)
        tuner = tune.Tuner(
            trainable(_cell_trial, resources),
            param_space={"cell": tune.grid_search([vars(c) for c in todo])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True,
                                        trial_name_creator=trial_namer(lambda c: cell_name(c["cell"]))),
            run_config=tune.RunConfig(storage_path=storage, name=suite.name, verbose=verbose, callbacks=callbacks),
        )
        failed = [r for r in tuner.fit() if r.error is not None]
    for r in failed:
        cell = r.config["cell"]
        print(f"failed cell {cell['method']} / {cell['dataset']} / seed {cell['seed']}: "
              f"{str(r.error).strip().splitlines()[-1]}")
    return {"done": len(todo) - len(failed), "failed": len(failed), "skipped": len(cells) - len(todo)}

