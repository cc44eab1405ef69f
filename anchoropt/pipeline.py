"""The main job (``anchoropt run``): data, a search per schedule and dataset, the benchmark, the report.

It answers three questions on the suite's datasets:

- *anchor count and learning rates*: for each schedule of the suite's ``schedule_methods`` and each
  dataset, its own search (the space, e.g. n_anchors, lr, anchor_lr), with a multi-fidelity
  scheduler (ASHA: poor trials stop after few epochs, so the budget buys more configurations)
  on the leak-free ``val`` objective; trial 0 is the reference default configuration;
- *one- vs two-stage*: both schedules get the same space, trials, scheduler and objective per
  dataset; the report tests tuned one-stage against tuned two-stage and draws best-so-far curves;
- *does tuning help*: each schedule's untuned reference defaults stay in the benchmark as its own
  method beside the tuned one (``<method>_tuned``: each dataset's best configuration), compared
  paired over datasets.

Steps: 1. the resource request is checked against the Ray cluster; 2. toy datasets named by the
suite are created under its ``data_root`` if missing, and every image feature set the searches
and cells read is encoded on all cores; 3. the searches
(``RESULTS/searches/<schedule>/<dataset>/``); 4. every (method, dataset, seed) cell as a Ray Tune
trial; 5. the report. Every step resumes: re-running the command after a kill continues where it
stopped.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchoropt.paths import shipped

if TYPE_CHECKING:  # the benchmark module imports Ray: loaded only when the job runs
    from anchoropt.report.tuning import Tuning
    from anchoropt.suite import Suite

DEFAULT_SUITE = shipped("suites", "toy11.yaml")
DEFAULT_SPACE = shipped("spaces", "anchors.yaml")


def ensure_toy_data(suite: Suite) -> None:
    """Create the suite's toy-11 datasets under its data root when they are not all there."""
    from anchoropt.config import TrainConfig
    from anchoropt.toy.datasets import TOY11_NAMES, make_toy11

    toy = [d for d in suite.datasets if d in TOY11_NAMES]
    if toy:
        root = Path(suite.config.get("data_root", TrainConfig.data_root))
        print(f"toy datasets under {root}: {', '.join(make_toy11(root, names=toy))}")


def prepare_features(suite: Suite, results: Path, objective: str | None, threads: int | None,
                     gpus_per_trial: float = 0) -> None:
    """Encode every image feature set the searches (``objective``; None: no search) and the
    benchmark cells will read, in this process on ``threads`` cores (default all), before any trial:
    trials then read them instead of encoding on one core each (:func:`anchoropt.train.encode_features`).
    Left to the trials when they get GPUs this process does not see (a CPU head node)."""
    import torch

    from anchoropt.benchmark import plan_cells
    from anchoropt.config import make_config
    from anchoropt.suite import method_values
    from anchoropt.train import encode_features

    if gpus_per_trial > 0 and not torch.cuda.is_available():
        return
    configs = [make_config(cell.config) for cell in plan_cells(suite, results / "cells")]
    if objective is not None:
        configs += [make_config({**method_values(suite, method, dataset)[0], "eval_split": objective})
                    for method in (suite.schedule_methods or {}).values() for dataset in suite.trained_datasets]
    started = time.time()
    count = encode_features(configs, threads)
    print(f"image features: {count} feature sets in the cache ({time.time() - started:.0f} s)")


def search_per_dataset(suite: Suite, results: Path, space: Path, num_trials: int, objective: str,
                       scheduler: str, resources: dict[str, Any]) -> tuple[Suite, Tuning | None]:
    """Search each schedule of ``suite.schedule_methods`` on each dataset.

    Returns the suite with a ``<method>_tuned`` method per schedule (its ``config:`` each
    dataset's ``best_config.yaml``; the untuned method stays as the reference defaults; the tuned
    pair becomes ``schedule_methods``) and what the searches found, for the report (None in a dry run).
    """
    import pandas as pd

    from anchoropt.report.tuning import Tuning
    from anchoropt.search.driver import run_search
    from anchoropt.search.spec import SearchError
    from anchoropt.suite import method_values

    trials, searches, importances = [], [], []
    methods, tuned, untuned = dict(suite.methods), {}, {}
    for schedule, method in (suite.schedule_methods or {}).items():
        folder = (results / "searches" / schedule).resolve()
        for dataset in suite.trained_datasets:
            out = folder / dataset
            base, _ = method_values(suite, method, dataset)
            if (out / "search.json").is_file():
                found = run_search(resume=out, num_trials=_same_search(out, space, num_trials, base, objective,
                                                                       scheduler), **resources)
            else:
                found = run_search(space, out, num_trials, base=base, objective=objective, scheduler=scheduler,
                                   **resources)
            if found is None:  # a dry run: the plan is printed
                continue
            print(f"{schedule} / {dataset}: " + " | ".join(found.summary().splitlines()[:2]))
            if found.n_complete == 0:
                raise SearchError(f"search {out}: no trial completed ({found.n_failed} failed, see "
                                  f"{out / 'trials.csv'}): the {method} cells would run untuned")
            trials.append(found.trials.assign(schedule=schedule, dataset=dataset))
            searches.append({"schedule": schedule, "dataset": dataset, "num_trials": found.num_trials,
                             "sampler": found.sampler, "importances_note": found.importances_note})
            importances += [{"schedule": schedule, "dataset": dataset, "param": k, "importance": v}
                            for k, v in (found.importances or {}).items()]
        spec = {k: v for k, v in suite.methods[method].items() if k != "config"}
        tuned[schedule], untuned[schedule] = f"{method}_tuned", method
        methods[tuned[schedule]] = {**spec, "config": str(folder / "{dataset}" / "best_config.yaml")}
    if not trials:
        return suite, None
    tuning = Tuning(pd.concat(trials, ignore_index=True), pd.DataFrame(searches),
                    pd.DataFrame(importances, columns=["schedule", "dataset", "param", "importance"]),
                    tuned, untuned, objective, scheduler)
    return dataclasses.replace(suite, methods=methods, schedule_methods=tuned), tuning


def _same_search(out: Path, space: Path, num_trials: int, base: dict, objective: str, scheduler: str) -> int:
    """The number of trials to resume the search in ``out`` with, when it is the search asked for.

    Raises:
        SearchError: the stored search has another space, base configuration, objective or
            scheduler, or more trials than asked (one line naming what changed and the fix).
    """
    from anchoropt.search.spec import SearchError, SearchSpec, new_spec, request_change

    stored = SearchSpec.read(out)
    requested = new_spec(space, out, num_trials, base, objective=objective, sampler=stored.sampler, seed=stored.seed,
                         scheduler=scheduler, cpus_per_trial=stored.cpus_per_trial,
                         gpus_per_trial=stored.gpus_per_trial, max_concurrent=stored.max_concurrent,
                         storage=stored.storage)
    change = request_change(stored, requested)
    if change is None and num_trials < stored.num_trials:
        change = f"{stored.num_trials} trials -> {num_trials}"
    if change is not None:
        raise SearchError(f"search {out} was made for another request ({change}): use another --results folder, "
                          f"or remove {out} to search again")
    if num_trials > stored.num_trials:
        print(f"search {out}: extending from {stored.num_trials} to {num_trials} trials")
    return num_trials


def run_main_job(suite_path: str | Path = DEFAULT_SUITE, results: str | Path = "results/toy11",
                 report_dir: str | Path = "results/toy11/report", overrides: dict[str, Any] | None = None,
                 space: str | Path = DEFAULT_SPACE, search_trials: int = 8, scheduler: str = "asha",
                 objective: str = "val", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                 max_concurrent: int | None = None, address: str | None = None,
                 num_cpus: int | None = None, verbose: int = 0, mlflow: str | bool | None = None,
                 dry_run: bool = False) -> Path | None:
    """Run the steps above; returns the path of ``report.md``.

    Args:
        suite_path: benchmark suite (default the toy-11 suite).
        overrides: TrainConfig keys replacing the suite's shared config (data_root, backbone, ...).
        search_trials: trials per schedule and dataset (equal budgets); 0 skips the searches
            (methods keep their suite config).
        scheduler: of every search (``asha`` or ``none``).
        verbose, mlflow: what the searches and the benchmark show and log to (``run_search``; an
            MLflow URI, False for none, None as each search and the benchmark stored it).
        dry_run: print what each search and the benchmark would run and return None; nothing is written.

    Raises:
        ConfigError (and the searches' and benchmark's own errors): e.g. a trial resource request
            no node of the Ray cluster meets, before any data is made or trial runs.
    """
    import ray

    from anchoropt.benchmark import choose_tracking, describe_plan, run_benchmark
    from anchoropt.io import check_output_dir
    from anchoropt.raytools import Resources, check_resources, ensure_ray
    from anchoropt.report import load_records, write_report
    from anchoropt.suite import load_suite

    started = time.time()
    suite = load_suite(suite_path, overrides)
    results = check_output_dir(results, "--results")
    check_output_dir(report_dir, "--report")
    resources = dict(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                     max_concurrent=max_concurrent, address=address, num_cpus=num_cpus, verbose=verbose,
                     mlflow=mlflow)
    if dry_run:
        if search_trials > 0:
            search_per_dataset(suite, results, Path(space), search_trials, objective, scheduler,
                               {**resources, "dry_run": True})
        print(describe_plan(suite, results / "cells"))
        if search_trials > 0 and suite.schedule_methods:
            print(f"(plus {', '.join(m + '_tuned' for m in suite.schedule_methods.values())}: each dataset's "
                  "search's best configuration, once the searches have run)")
        return None
    if mlflow:  # the store, before Ray starts (each search and the benchmark check their experiment too)
        choose_tracking(results / "cells", suite, mlflow)
    started_ray = not ray.is_initialized()
    ensure_ray(address, num_cpus, verbose=verbose)  # one Ray for the whole job
    try:
        check_resources(Resources(cpus_per_trial, gpus_per_trial))
        ensure_toy_data(suite)
        prepare_features(suite, results, objective if search_trials > 0 else None, num_cpus, gpus_per_trial)
        tuning = None
        if search_trials > 0:
            suite, tuning = search_per_dataset(suite, results, Path(space), search_trials, objective, scheduler,
                                               resources)
        counts = run_benchmark(suite, results / "cells", **resources)
    finally:
        if started_ray:
            ray.shutdown()
    print(f"cells: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} already done")
    if tuning is not None:
        tuning = dataclasses.replace(tuning, wall_time_s=time.time() - started)
    report = write_report(load_records(results / "cells"), report_dir, baseline=suite.baseline,
                          schedules=_schedule_pair(suite), tuning=tuning, pairs=suite.pairs)
    print(f"report: {report}  (main job {time.time() - started:.0f} s)")
    return report


def _schedule_pair(suite: Suite) -> tuple[str, str] | None:
    """(one-stage method, two-stage method) for the report's schedule section."""
    pairs = suite.schedule_methods
    return (pairs["one_stage"], pairs["two_stage"]) if pairs else None
