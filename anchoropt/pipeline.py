"""The main job (``anchoropt run``): data, a search per schedule and dataset, the benchmark, the report.

It answers three questions on the suite's datasets:

- *anchor count and learning rates*: for each schedule of the suite's ``schedule_methods`` and each
  dataset, its own search (the space, e.g. n_anchors, lr, anchor_lr) on the leak-free ``val``
  objective, every trial trained to its last epoch (no early stopping by
  default: see README); trial 0 is the reference default configuration;
- *one- vs two-stage*: both schedules get the same space, trials, scheduler and objective per
  dataset; the report tests tuned one-stage against tuned two-stage and draws best-so-far curves;
- *does tuning help*: each schedule's untuned reference defaults stay in the benchmark as its own
  method beside the tuned one (``<method>_tuned``: each dataset's best configuration), compared
  paired over datasets.

Steps: 1. the resource request is checked against the Ray cluster; 2. toy datasets named by the
suite are created under its ``data_root`` if missing, and every image feature set the searches
and cells read is encoded on all cores; 3. the searches
(``RESULTS/searches/<schedule>/<dataset>/``); 4. every (method, dataset, seed) cell as a Ray Tune
trial; 5. the report (:func:`write_main_report`, which ``anchoropt report RESULTS`` also runs), whose
closing answers are printed. Every step resumes: re-running the command after a kill continues where
it stopped. ``RESULTS/job.json`` keeps the suite file, the methods the report compares and the job's
wall time: the time of the invocations' steps that ran something (data made, trials, cells), summed
over invocations, so a resumed job counts every part of its work and a rerun with nothing to do
adds nothing.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchoropt.paths import shipped

if TYPE_CHECKING:  # the report and suite modules load pandas and YAML: imported only where they are used
    from anchoropt.report.tuning import Tuning
    from anchoropt.suite import Suite

DEFAULT_SUITE = shipped("suites", "toy11.yaml")
DEFAULT_SPACE = shipped("spaces", "anchors.yaml")
JOB_FILE = "job.json"
ANSWERS = "## The three answers, as measured"


class WorkClock:
    """The main job's wall time of real work, summed over invocations (``RESULTS/job.json``).

    Each step ends with :meth:`lap`: the time since the previous lap is added when the step ran
    something (or was interrupted: what it finished is kept) and dropped when it had nothing to
    do, so a no-op rerun leaves the total as it was. The file is rewritten at every lap that adds,
    so a killed job loses at most its running step's time.
    """

    def __init__(self, path: Path, started: float):
        self.path, self.last = path, started
        stored = read_job(path.parent)
        self.total: float | None = stored.get("wall_time_s")
        self.invocations = int(stored.get("invocations", 0))
        self.worked = False  # this invocation added time

    def lap(self, worked: bool) -> None:
        now = time.time()
        if worked:
            self.total = (self.total or 0.0) + now - self.last
            if not self.worked:
                self.invocations += 1
            self.worked = True
            self.save()
        self.last = now

    def save(self, **fields: Any) -> None:
        from anchoropt.io import save_json

        job = {**read_job(self.path.parent), **fields, "wall_time_s": self.total, "invocations": self.invocations}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_json(job, self.path)


def read_job(results: str | Path) -> dict[str, Any]:
    """``RESULTS/job.json`` of a main job ({} when absent, e.g. results of an older anchoropt):
    suite, baseline, pairs, schedule_methods, tuned (schedule -> method), wall_time_s (None: not
    recorded), invocations. Raises ValueError naming the file when it does not read."""
    path = Path(results) / JOB_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not a job file ({err})") from None


def missing_toy_data(suite: Suite) -> tuple[Path, list[str]]:
    """(data root, the suite's toy-11 datasets not complete there); reads, writes nothing."""
    from anchoropt.config import TrainConfig
    from anchoropt.toy.datasets import TOY11_NAMES, missing_toy

    root = Path(suite.config.get("data_root", TrainConfig.data_root))
    return root, missing_toy(root, [d for d in suite.datasets if d in TOY11_NAMES])


def ensure_toy_data(suite: Suite) -> bool:
    """Create the suite's toy-11 datasets under its data root when they are not all there; returns
    whether any was made."""
    from anchoropt.toy.datasets import make_toy11

    root, missing = missing_toy_data(suite)
    if missing:
        print(f"toy datasets under {root}: {', '.join(make_toy11(root, names=missing))}")
    return bool(missing)


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
                       scheduler: str, resources: dict[str, Any],
                       clock: WorkClock | None = None) -> tuple[Suite, Tuning | None]:
    """Search each schedule of ``suite.schedule_methods`` on each dataset, all searches in one
    call of :func:`anchoropt.search.driver.run_searches` (one Tune run, warm workers, one progress
    bar), then print each search's best; ``clock`` gets one lap for them.

    Returns the suite with a ``<method>_tuned`` method per schedule (its ``config:`` each
    dataset's ``best_config.yaml``; the untuned method stays as the reference defaults; the tuned
    pair becomes ``schedule_methods``) and what the searches found, for the report. In a dry run
    (``resources["dry_run"]``) the plans are printed, the tuned method is added for a schedule
    whose searches have all finished (so its cells are planned too) and the tuning is None.
    """
    import pandas as pd

    from anchoropt.report.tuning import Tuning
    from anchoropt.search.driver import run_searches
    from anchoropt.search.spec import SearchError
    from anchoropt.suite import method_values

    per_search = {k: resources.get(k) for k in ("cpus_per_trial", "gpus_per_trial", "max_concurrent")}
    per_call = {k: v for k, v in resources.items() if k not in per_search}
    requests, where, finished = [], [], {}
    for schedule, method in (suite.schedule_methods or {}).items():
        folder = (results / "searches" / schedule).resolve()
        finished[schedule] = True  # every search of this schedule has run its trials (a dry run plans its cells)
        for dataset in suite.trained_datasets:
            out = folder / dataset
            base, _ = method_values(suite, method, dataset)
            done_before = _trials_done(out)
            finished[schedule] &= done_before >= num_trials and (out / "best_config.yaml").is_file()
            if (out / "search.json").is_file():
                requests.append(dict(resume=out, num_trials=_same_search(out, space, num_trials, base, objective,
                                                                         scheduler), **per_search))
            else:
                requests.append(dict(space=space, out=out, num_trials=num_trials, base=base, objective=objective,
                                     scheduler=scheduler, **per_search))
            where.append((schedule, method, dataset, done_before))
    done = sum(w[3] for w in where)
    if not per_call.get("dry_run"):
        print(f"searches: {len(requests)} ({len(finished)} schedules x {len(suite.trained_datasets)} datasets), "
              f"{len(requests) * num_trials} trials, {done} done before")
    found_all = run_searches(requests, label="searches", **per_call)
    methods, tuned, untuned = dict(suite.methods), {}, {}
    for schedule, method in (suite.schedule_methods or {}).items():
        spec = {k: v for k, v in suite.methods[method].items() if k != "config"}
        tuned[schedule], untuned[schedule] = f"{method}_tuned", method
        if found_all is None and not finished[schedule]:
            print(f"(plus {tuned[schedule]}: each dataset's {schedule} search's best configuration, once those "
                  "searches have run)")
            continue
        folder = (results / "searches" / schedule).resolve()
        methods[tuned[schedule]] = {**spec, "config": str(folder / "{dataset}" / "best_config.yaml")}
    if found_all is None:  # a dry run: the plans are printed
        return dataclasses.replace(suite, methods=methods), None
    if clock is not None:
        clock.lap(worked=sum(found.n_done for found in found_all) > done)
    trials, searches, importances = [], [], []
    for found, (schedule, method, dataset, _) in zip(found_all, where):
        print(f"{schedule} / {dataset}: " + " | ".join(found.summary().splitlines()[:2]))
        if found.n_complete == 0:
            raise SearchError(f"search {found.out_dir}: no trial completed ({found.n_failed} failed, see "
                              f"{found.out_dir / 'trials.csv'}): the {method} cells would run untuned")
        trials.append(found.trials.assign(schedule=schedule, dataset=dataset))
        versus = found.vs_default or {}
        searches.append({"schedule": schedule, "dataset": dataset, "num_trials": found.num_trials,
                         "sampler": found.sampler, "importances_note": found.importances_note,
                         "best_trial": found.best_trial, "best_hm_se": found.best_hm_se,
                         "delta_vs_default": versus.get("delta"), "p_vs_default": versus.get("p_adjusted"),
                         "beats_default": versus.get("beats_default"), "vs_default": versus.get("words")})
        importances += [{"schedule": schedule, "dataset": dataset, "param": k, "importance": v}
                        for k, v in (found.importances or {}).items()]
    if not trials:
        return suite, None
    tuning = Tuning(pd.concat(trials, ignore_index=True), pd.DataFrame(searches),
                    pd.DataFrame(importances, columns=["schedule", "dataset", "param", "importance"]),
                    tuned, untuned, objective, scheduler)
    return dataclasses.replace(suite, methods=methods, schedule_methods=tuned), tuning


def _trials_done(out: Path) -> int:
    """Trials a search folder has finished, from its ledger (0: no search yet)."""
    from anchoropt.search.ledger import read_results

    return len(read_results(out))


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
                 space: str | Path = DEFAULT_SPACE, search_trials: int = 8, scheduler: str = "none",
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
        scheduler: of every search (``none``, the default: every trial runs all its epochs, or ``asha``).
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
    from anchoropt.suite import load_suite

    started = time.time()
    suite = load_suite(suite_path, overrides)
    results = check_output_dir(results, "--results")
    check_output_dir(report_dir, "--report")
    resources = dict(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                     max_concurrent=max_concurrent, address=address, num_cpus=num_cpus, verbose=verbose,
                     mlflow=mlflow)
    if dry_run:
        root, pending = missing_toy_data(suite)
        if pending:
            print(f"dry run: toy datasets {', '.join(pending)} would be made under {root} first")
        planned = suite
        if search_trials > 0:
            planned, _ = search_per_dataset(suite, results, Path(space), search_trials, objective, scheduler,
                                            {**resources, "dry_run": True})
        print(describe_plan(planned, results / "cells", pending))
        return None
    choose_tracking(results / "cells", suite, mlflow)  # the store given or stored, before Ray starts (each
    # search and the benchmark check their own experiment too)
    clock = WorkClock(results / JOB_FILE, started)
    started_ray = not ray.is_initialized()
    ensure_ray(address, num_cpus, verbose=verbose)  # one Ray for the whole job
    working = False
    try:
        check_resources(Resources(cpus_per_trial, gpus_per_trial))
        working = True
        clock.lap(worked=ensure_toy_data(suite))
        prepare_features(suite, results, objective if search_trials > 0 else None, num_cpus,
                         gpus_per_trial)  # timed with the searches
        if search_trials > 0:
            suite, _ = search_per_dataset(suite, results, Path(space), search_trials, objective, scheduler,
                                          resources, clock)
        counts = run_benchmark(suite, results / "cells", **resources)
        clock.lap(worked=counts["done"] + counts["failed"] > 0)
    except BaseException:
        if working:  # the interrupted step's finished trials and cells are kept: its time counts
            clock.lap(worked=True)
        raise
    finally:
        if started_ray:
            ray.shutdown()
    print(f"cells: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} already done")
    clock.save(suite=str(Path(suite.path).resolve()), baseline=suite.baseline, pairs=suite.pairs,
               schedule_methods=suite.schedule_methods, tuned=suite.schedule_methods if search_trials > 0 else None)
    report = write_main_report(results, report_dir)
    wall = "not recorded" if clock.total is None else f"{clock.total / 60:.1f} min"
    print(f"report: {report}  (this run {time.time() - started:.0f} s; the job's work, all runs: {wall})")
    print(answers_text(report))
    return report


def write_main_report(results: str | Path, report_dir: str | Path, baseline: str | None = None,
                      schedules: tuple[str, str] | None = None, pairs: dict[str, str] | None = None,
                      **options: Any) -> Path:
    """The main job's report from its results folder alone: records under ``RESULTS/cells``, the
    searches under ``RESULTS/searches`` (:func:`anchoropt.report.tuning.read_tuning`) and
    ``RESULTS/job.json`` (suite, baseline, schedule methods, pairs, wall time); ``anchoropt run``
    and ``anchoropt report RESULTS`` both write it so. ``baseline``, ``schedules``, ``pairs``
    replace the job's; ``options`` go to :func:`anchoropt.report.write_report`. Returns report.md.

    Raises:
        ValueError: unreadable records, job file or search outputs (one line naming the file).
    """
    from anchoropt.report import load_records, write_report
    from anchoropt.report.tuning import read_tuning

    results = Path(results)
    job = read_job(results)
    records = load_records(results / "cells")
    methods = sorted(set(records["method"]))
    tuning = read_tuning(results, methods, job.get("tuned"))
    if tuning is not None:
        tuning = dataclasses.replace(tuning, wall_time_s=job.get("wall_time_s"))
        schedules = schedules or (tuning.tuned["one_stage"], tuning.tuned["two_stage"])
    pair = job.get("schedule_methods")
    schedules = schedules or ((pair["one_stage"], pair["two_stage"]) if pair else None)
    return write_report(records, report_dir, baseline=baseline or job.get("baseline"), schedules=schedules,
                        tuning=tuning, pairs=pairs or job.get("pairs"), job=job, **options)


def answers_text(report: Path) -> str:
    """The report's closing answers (its "three answers" section) in plain words for the terminal:
    no Markdown emphasis or escapes ("" when the report has no such section)."""
    text = report.read_text(encoding="utf-8")
    if ANSWERS not in text:
        return ""
    section = text[text.index(ANSWERS):].split("\n## ", 1)[0]
    plain = re.sub(r"\\(.)", r"\1", section.replace("**", "")).replace(ANSWERS, "The three answers, as measured:")
    return plain.strip()
