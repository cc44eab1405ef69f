"""The Python API: what ``anchoropt train|search|benchmark|report`` do, each one call, for notebooks
and scripts. Config keys are :class:`anchoropt.config.TrainConfig`'s, given as keyword arguments
(or a YAML file, ``config=``); paths are relative to the working directory, as on the command line.

Example (the offline toy world; ``anchoropt data toy`` makes ``data/toy11``)::

    from anchoropt import api

    record = api.train(dataset="toy_count", method="coop", epochs=2)          # one run
    print(record["metrics"]["hm"])
    found = api.search("search_spaces/anchors.yaml", "searches/toy_count", num_trials=4,
                       dataset="toy_count", epochs=2)                          # Optuna + Ray Tune
    print(found.best_params)
    counts = api.benchmark("benchmarks/toy11.yaml", "results/mine", datasets=["toy_count"], seeds=[1],
                           methods=["zeroshot_clip", "coop"], epochs=2)       # suite cells
    api.report("results/mine", "reports/mine", baseline="coop")              # report.md, .html, .tex

Each raises the errors of its command (``ConfigError``, ``DataError``, ``SearchError``, ...: one line
naming the file, key or value) rather than exiting.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from anchoropt.config import load_config


def train(config: str | Path | None = None, out: str | Path | None = None, log=print, **keys: Any) -> dict:
    """Train and evaluate one (dataset, seed, config); returns the result record (metrics in percent,
    ``docs/INTERFACES.md``). ``out``: folder for ``record.json`` and ``prompts.pt`` (None: nothing is
    written). ``log``: progress lines (images encoded, Stage I epochs; None: quiet). ``keys``:
    TrainConfig keys, e.g. ``dataset="toy_count", n_anchors=4``, over the ``config`` YAML."""
    from anchoropt.train import train as train_run

    return train_run(load_config(config, keys), out_dir=out, log=log)


def search(space: str | Path | dict, out: str | Path, num_trials: int, *, config: str | Path | None = None,
           objective: str = "val", scheduler: str = "none", sampler: str = "tpe", seed: int = 0,
           max_concurrent: int | None = None, **keys: Any):
    """Search hyperparameters (Optuna proposes, Ray Tune runs the trials) into ``out``, or resume the
    search already there; returns its :class:`anchoropt.search.outputs.SearchResult` (best
    parameters and configuration, trials table). ``space``: a space YAML or mapping; ``keys``:
    the base configuration's TrainConfig keys (over ``config``)."""
    from anchoropt.search.driver import run_search

    if (Path(out) / "search.json").is_file():
        return run_search(resume=out, num_trials=num_trials, max_concurrent=max_concurrent)
    return run_search(space, out, num_trials, base=load_config(config, keys), objective=objective,
                      sampler=sampler, seed=seed, scheduler=scheduler, max_concurrent=max_concurrent)


def benchmark(suite: str | Path, results: str | Path, *, datasets: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, methods: Sequence[str] | None = None,
              max_concurrent: int | None = None, **keys: Any) -> dict[str, int]:
    """Run a suite's unfinished (method, dataset, seed) cells as Ray Tune trials into ``results``
    (finished ones are kept); returns the counts ``done``, ``failed``, ``skipped``. ``keys``:
    TrainConfig keys over the suite's shared config (e.g. ``data_root=...``)."""
    from anchoropt.benchmark import run_benchmark
    from anchoropt.config import typed_overrides
    from anchoropt.suite import load_suite, select

    chosen = select(load_suite(suite, typed_overrides(keys)), datasets=list(datasets) if datasets else None,
                    seeds=list(seeds) if seeds else None, methods=list(methods) if methods else None)
    return run_benchmark(chosen, results, max_concurrent=max_concurrent)


def report(results: str | Path | Sequence[str | Path], out: str | Path, **options: Any) -> Path:
    """Write the significance report of the records under ``results`` into ``out``; returns the
    path of ``report.md``. A main job's results folder (``anchoropt run --results``) gives its whole
    report, search sections included. ``options``: :func:`anchoropt.report.write_report`'s
    (``baseline``, ``schedules``, ``hm_convention``, ``display_names``, ``pairs``)."""
    from anchoropt.io import check_output_dir
    from anchoropt.pipeline import write_main_report
    from anchoropt.report import load_records, write_report

    check_output_dir(out, "--out")
    if not isinstance(results, (str, Path)):
        return write_report(load_records(results), out, **options)
    if (Path(results) / "cells").is_dir() and (Path(results) / "searches").is_dir():
        return write_main_report(results, out, **options)
    return write_report(load_records(results), out, job=_benchmark_job(Path(results)), **options)


def _benchmark_job(results: Path) -> dict[str, Any] | None:
    """The provenance an ``anchoropt benchmark`` results folder keeps (its suite files), in the
    form of a main job's ``job.json`` (:func:`anchoropt.report.provenance.provenance_section`)."""
    from anchoropt.benchmark import read_state

    suites = read_state(results).get("suites") or []
    return {"suite": ", ".join(suites)} if suites else None
