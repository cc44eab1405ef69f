"""The main job (``anchoropt run``): data, a search per AnchorOPT schedule, the benchmark, the report.

1. Toy datasets named by the suite are created under its ``data_root`` if missing.
2. For each schedule of the suite's ``schedule_methods``, a search (same space, same number of
   trials: equal tuning budgets) on one dataset; the method then uses the search's best
   configuration.
3. Every (method, dataset, seed) cell runs as a Ray Tune trial (finished cells are skipped).
4. The report (tables, tests, CD diagram, one-stage vs two-stage) is written.

Every step resumes: re-running the command after a kill continues where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchoropt.paths import shipped

if TYPE_CHECKING:  # the benchmark module imports Ray: loaded only when the job runs
    import pandas as pd

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


def search_schedules(suite: Suite, results: Path, space: Path, num_trials: int, dataset: str,
                     objective: str, resources: dict[str, Any]) -> tuple[Suite, pd.DataFrame | None]:
    """Search each schedule of ``suite.schedule_methods``; returns the suite with each method tuned
    by its search's best configuration (``suite`` itself is not changed) and the search histories
    (columns schedule, trial_number, hm) for the report."""
    import pandas as pd

    from anchoropt.search.driver import run_search
    from anchoropt.suite import Tuned, method_values

    histories = []
    for schedule, method in (suite.schedule_methods or {}).items():
        out = results / "searches" / schedule
        base, _ = method_values(suite, method, dataset)
        if (out / "search.json").is_file():
            found = run_search(resume=out, **resources)
        else:
            found = run_search(space, out, num_trials, base=base, objective=objective, **resources)
        if found is None:  # a dry run: the plan is printed
            continue
        print(found.summary())
        if found.best_config is not None:
            suite = suite.with_tuned(method, Tuned(found.best_config, f"search_{found.objective}"))
        histories.append(pd.DataFrame({"schedule": method, "trial_number": found.trials["trial"],
                                       "hm": found.trials["hm"]}))
    return suite, pd.concat(histories, ignore_index=True) if histories else None


def run_main_job(suite_path: str | Path = DEFAULT_SUITE, results: str | Path = "results/toy11",
                 report_dir: str | Path = "results/toy11/report", overrides: dict[str, Any] | None = None,
                 space: str | Path = DEFAULT_SPACE, search_trials: int = 8, search_dataset: str | None = None,
                 objective: str = "val", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
                 max_concurrent: int | None = None, address: str | None = None,
                 num_cpus: int | None = None, verbose: int = 0, mlflow: str | None = None,
                 dry_run: bool = False) -> Path | None:
    """Run the four steps above; returns the path of ``report.md``.

    Args:
        suite_path: benchmark suite (default the toy-11 suite).
        overrides: TrainConfig keys replacing the suite's shared config (data_root, backbone, ...).
        search_trials: trials per schedule; 0 skips the searches (methods keep their suite config).
        search_dataset: dataset the searches tune on (default the suite's ``search_dataset``, else
            its first dataset).
        verbose, mlflow: what the searches and the benchmark show and log to (``run_search``).
        dry_run: print what each search and the benchmark would run (cells of searched methods
            get the search's best configuration then) and return None; nothing is written.
    """
    from anchoropt.benchmark import describe_plan, run_benchmark
    from anchoropt.io import check_output_dir
    from anchoropt.report import load_records, write_report
    from anchoropt.suite import load_suite

    suite = load_suite(suite_path, overrides)
    results = check_output_dir(results, "--results")
    check_output_dir(report_dir, "--report")
    if not dry_run:
        ensure_toy_data(suite)
    resources = dict(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                     max_concurrent=max_concurrent, address=address, num_cpus=num_cpus, verbose=verbose,
                     mlflow=mlflow)
    histories = None
    if search_trials > 0:
        suite, histories = search_schedules(suite, results, Path(space), search_trials,
                                     search_dataset or suite.search_dataset or suite.datasets[0], objective,
                                     {**resources, "dry_run": dry_run} if dry_run else resources)
    if dry_run:
        print(describe_plan(suite, results / "cells"))
        if search_trials > 0 and suite.schedule_methods:
            print(f"(cells of {', '.join(suite.schedule_methods.values())} train with their search's best "
                  "configuration once the search has run)")
        return None
    counts = run_benchmark(suite, results / "cells", **resources)
    print(f"cells: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} already done")
    report = write_report(load_records(results / "cells"), report_dir, baseline=suite.baseline,
                          schedules=_schedule_pair(suite), search_histories=histories)
    print(f"report: {report}")
    return report


def _schedule_pair(suite: Suite) -> tuple[str, str] | None:
    """(one-stage method, two-stage method) for the report's schedule section."""
    pairs = suite.schedule_methods
    return (pairs["one_stage"], pairs["two_stage"]) if pairs else None
