"""Hyperparameter search: Optuna proposes, Ray Tune distributes (``anchoropt search``).

The driver ties four parts together: the request (:mod:`.spec`, ``search.json``), the record of
what is done (:mod:`.ledger`, ``results.jsonl`` and the study), the Ray side (:mod:`.trial`)
and what is shown (:mod:`.outputs`).

One search lives in one folder ``DIR``:

- ``search.json``: what was asked (space, base configuration, objective, sampler, seed, resources,
  storage, study name, number of trials) and one entry per run (first run and each resume);
- ``study.journal``: the Optuna study (unless ``storage`` names an RDB URL), outliving the run;
- ``results.jsonl``: one line per finished trial, appended and fsync'ed by the driver the moment
  Tune reports the trial complete or failed. It is the record of what is done: a killed search
  (Ctrl-C, ``kill -9``) resumes with :func:`run_search` ``(resume=DIR)`` and runs only the trials
  missing from it; trials that were in flight are re-run with the same parameters. A study
  storage lost or damaged by a kill is rebuilt from it (trial numbers kept);
- ``ray/run-K/``: Ray Tune's own experiment folders;
- outputs: ``trials.csv`` / ``trials.parquet``, ``best_config.yaml`` (only TrainConfig keys:
  ``anchoropt train --config DIR/best_config.yaml`` accepts it), ``importances.csv``,
  ``history.png``, ``hm_vs_anchors.png``, ``summary.json``.

Trial 0 is the base configuration itself (when it lies in the space), then any ``enqueue``
files' configurations, then the sampler's draws: a search cannot end below not searching on its
own objective.

Every trial runs :func:`anchoropt.train.train` with the base configuration updated by the drawn
parameters and reports ``hm``, ``acc_base``, ``acc_novel`` (percent) after every epoch through
``ray.tune.report``. All trials share the base configuration's absolute ``cache_dir``: image
features are computed once per image set (``anchoropt.features``, under a file lock),
and Stage I once per distinct Stage I configuration (``anchoropt.train.stage1_cache_path``).
On a multi-node cluster, ``cache_dir``, ``data_root`` and the search folder must be on a file system
every node sees (relative paths of the base configuration are made absolute first).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from ray import tune

from anchoropt.config import TrainConfig
from anchoropt.io import check_output_dir
from anchoropt.search.ledger import (ResultsLog, check_study_matches, lost_trials, open_storage, read_results,
                                     rebuild_study, reconcile, repair_journal)
from anchoropt.search.outputs import SearchResult, write_outputs
from anchoropt.search.spec import SearchError, SearchSpec, make_sampler, new_spec, now
from anchoropt.search.trial import (METRIC, NUMBER_KEY, ORIGIN_KEY, RUN_KEY, StudySearcher, outcome, run_trial,
                                    trial_config)


INFRA_RETRIES = 3  # runs re-queuing trials lost with their actor or node, after the first


def run_search(space: str | Path | dict | None = None, out: str | Path | None = None,
               num_trials: int | None = None, base: TrainConfig | dict | None = None, *,
               objective: str = "val", sampler: str = "tpe", seed: int = 0, scheduler: str = "none",
               cpus_per_trial: float | None = None, gpus_per_trial: float | None = None,
               max_concurrent: int | None = None, address: str | None = None, storage: str | None = None,
               enqueue: list[str | Path] = (), resume: str | Path | None = None, num_cpus: int | None = None,
               worker_setup: Callable[[], None] | None = None, verbose: int = 0, print_summary: bool = False,
               mlflow: str | bool | None = None, dry_run: bool = False) -> SearchResult | None:
    """Run (or resume) a search and write its outputs.

    Args:
        space: YAML file (or the equivalent mapping) of the parameters to search; it is stored in
            ``out/search.json`` so that a resume does not depend on the file.
        out: the search folder (must not hold a search already: resume it instead).
        num_trials: total number of trials (on resume: optionally raise the total); bruteforce
            runs at most its grid's size.
        base: base configuration (TrainConfig or dict of its keys); the drawn parameters update it.
        objective: ``val`` (leak-free pseudo base/novel split, SPEC section 8) or ``test``.
        sampler: Optuna sampler name (``tpe``, ``random``, ``cmaes``, ``qmc``, ``gp``, ``bruteforce``),
            seeded with ``seed``; TPE and GP start with ``spec.startup_trials(num_trials)`` random trials.
        scheduler: ``none`` or ``asha`` (early stopping on the per-epoch ``hm``; stopped trials are
            PRUNED in the study).
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (fractions allowed; default 1 CPU,
            0 GPU); checked against the cluster before any trial starts. A resume keeps the
            search's own and refuses different ones.
        max_concurrent: at most this many trials at once (default: as resources allow).
        address: join this Ray cluster; else a local Ray with ``num_cpus`` CPUs is started
            (an already initialised Ray in this process is used as is).
        storage: Optuna RDB URL (``sqlite:///...``, ``postgresql://...``; not an in-memory one);
            default a journal file ``out/study.journal``.
        enqueue: YAML files of configurations to run first (after the base configuration).
        resume: a search folder to resume; the other arguments but ``num_trials``, ``address``,
            ``num_cpus``, ``max_concurrent``, ``worker_setup`` and ``verbose`` come from it.
        worker_setup: picklable function run in the worker at the start of each trial.
        verbose: 0: one progress bar (:mod:`anchoropt.progress`); 1, 2: Ray Tune's own output.
        mlflow: MLflow tracking URI to log every trial to, stored in ``search.json`` (a resume given
            None keeps logging there; False: no MLflow from now on). TensorBoard files are always
            written under ``out/tensorboard`` (:mod:`anchoropt.tracking`).
        dry_run: validate, print what the search would run (:func:`anchoropt.search.show.plan`)
            and return None, writing nothing.

    Raises:
        SearchError / SpaceError / ConfigError: bad arguments, space, folder or storage, or a trial
            resource request no node of the cluster meets (all before any trial starts).
        TrackingError: the MLflow store cannot be logged to (before Ray starts).
    """
    import ray

    started = time.time()
    started_ray = not ray.is_initialized()  # a Ray already initialised in this process is used as is
    made: list[Path] = []  # what a new search wrote, removed if it fails before its first trial
    try:
        if resume is not None:
            out_dir = Path(resume).expanduser().resolve()
            spec = _resumed_spec(out_dir, num_trials, max_concurrent, cpus_per_trial, gpus_per_trial)
            if dry_run:
                return _dry_run(spec, out_dir, resume=True)
            _check_outputs(spec, out_dir, "--resume")
            _choose_tracking(spec, out_dir, mlflow)
        else:
            if space is None or out is None or num_trials is None:
                raise SearchError("a new search needs a space, an output folder and a number of trials")
            out_dir = Path(out).expanduser().resolve()
            if (out_dir / "search.json").is_file():
                raise SearchError(f"{out_dir} already holds a search: resume it with --resume {out_dir}")
            spec = new_spec(space, out_dir, num_trials, base, objective=objective, sampler=sampler, seed=seed,
                            scheduler=scheduler, cpus_per_trial=1.0 if cpus_per_trial is None else cpus_per_trial,
                            gpus_per_trial=gpus_per_trial or 0.0, max_concurrent=max_concurrent, storage=storage,
                            enqueue=enqueue)
            if dry_run:
                return _dry_run(spec, out_dir, resume=False)
            _check_outputs(spec, out_dir, "--out")
            _choose_tracking(spec, out_dir, mlflow)
            _start_ray(spec, address, num_cpus, verbose)
            made = [out_dir] if not out_dir.exists() else [out_dir / "search.json", out_dir / "study.journal"]
            out_dir.mkdir(parents=True, exist_ok=True)
            spec.write(out_dir)
        study, storage_obj, notes = _open_study(spec, out_dir)
        rows = reconcile(study, storage_obj, out_dir, spec)
        for _ in range(1 + INFRA_RETRIES):  # the runs after the first re-run trials lost with their actor or node
            if spec.num_trials <= len(rows):
                break
            run_index = len(spec.runs)
            _start_ray(spec, address, num_cpus, verbose)
            spec.runs.append({"run": run_index, "started": now(), "trials_before": len(rows),
                              "trials_asked": spec.num_trials - len(rows), 
                              "max_concurrent": spec.max_concurrent, **({"notes": notes} if notes else {})})
            notes = []
            spec.write(out_dir)
            made = []  # from here the folder holds a search to resume
            _tune(spec, out_dir, study, run_index, rows, worker_setup=worker_setup, verbose=verbose)
            spec.runs[-1]["finished"] = now()
            spec.write(out_dir)
            rows = reconcile(study, storage_obj, out_dir, spec)
            lost = lost_trials(out_dir)
            if lost and len(rows) < spec.num_trials:
                print(f"{len(lost)} trial(s) lost with their actor or node (not failures): re-running "
                      f"{', '.join(str(n) for n in sorted(lost))} with the same parameters")
    except Exception:
        for path in made:  # no half-made search blocks the corrected command
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    result = write_outputs(out_dir, spec=spec, study=study, rows=rows)
    result.wall_time_s = time.time() - started
    if print_summary:
        print(result.summary())
    return result


def _check_outputs(spec: SearchSpec, out_dir: Path, flag: str) -> None:
    """The search folder and the trials' feature cache are writable, with room, before Ray starts
    (``io.check_output_dir``): a read-only or full disk is one line, not the driver's TensorBoard
    logger failing in every trial."""
    check_output_dir(out_dir, flag)
    check_output_dir(spec.base.get("cache_dir") or TrainConfig.cache_dir, "cache_dir")


def _resumed_spec(out_dir: Path, num_trials: int | None, max_concurrent: int | None, cpus_per_trial: float | None,
                  gpus_per_trial: float | None) -> SearchSpec:
    """The stored spec, with the few options a resume may change (a changed request is refused)."""
    spec = SearchSpec.read(out_dir)
    for flag, given, stored in (("--cpus-per-trial", cpus_per_trial, spec.cpus_per_trial),
                                ("--gpus-per-trial", gpus_per_trial, spec.gpus_per_trial)):
        if given is not None and float(given) != float(stored):
            raise SearchError(f"{flag} {given:g} differs from the {stored:g} the search in {out_dir} was started "
                              f"with: a resumed search keeps its resource request (start a new search instead)")
    if num_trials is not None:
        if num_trials < spec.num_trials:
            raise SearchError(f"--num-trials {num_trials} is below the search's {spec.num_trials}")
        if spec.grid_size is not None and num_trials > spec.grid_size:
            raise SearchError(f"--num-trials {num_trials}: the bruteforce grid of {out_dir} has only "
                              f"{spec.grid_size} points")
        spec.num_trials = num_trials
    if max_concurrent is not None:
        spec.max_concurrent = max_concurrent
    return spec


def _choose_tracking(spec: SearchSpec, out_dir: Path, mlflow: str | bool | None) -> None:
    """Set the search's MLflow target (given, as stored, or off) and check its store, before Ray starts.

    Raises:
        TrackingError: the store cannot be logged to (one line).
    """
    from anchoropt.config import make_config
    from anchoropt.tracking import check_mlflow, choose_target

    space = spec.search_space
    searched = [p.name for p in space.params if p.name in ("method", "schedule") and p.type != "fixed"]
    fixed = {p.name: p.value for p in space.params if p.type == "fixed"}
    what = f"search over {' and '.join(searched)}" if searched else \
        f"search of {make_config({**spec.base, **fixed}, source=str(out_dir / 'search.json')).run_name}"
    target = choose_target(mlflow, spec.mlflow, out_dir, what)
    if target is not None:
        check_mlflow(target)
    spec.mlflow = target.to_dict() if target else None


def _dry_run(spec: SearchSpec, out_dir: Path, resume: bool) -> None:
    from anchoropt.search.show import plan

    print(plan(spec, out_dir, resume))


def _start_ray(spec: SearchSpec, address: str | None, num_cpus: int | None, verbose: int) -> None:
    from anchoropt.progress import ray_output
    from anchoropt.raytools import Resources, check_resources, ensure_ray

    with ray_output(verbose):
        ensure_ray(address=address, num_cpus=num_cpus, verbose=verbose)
    check_resources(Resources(spec.cpus_per_trial, spec.gpus_per_trial))


def _open_study(spec: SearchSpec, out_dir: Path):
    """The search's study, repaired or rebuilt from the ledger when a kill or a lost file left it
    unreadable or empty; the enqueued configurations are put in a new study before any draw.
    Returns (study, storage, notes on what was repaired)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    notes = [] if spec.storage else [n for n in [repair_journal(out_dir / "study.journal")] if n]
    storage = open_storage(spec, out_dir)
    where = spec.storage or str(out_dir / "study.journal")
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction="maximize",
                                    load_if_exists=True)
    except (ValueError, RuntimeError) as err:
        raise SearchError(f"{where}: the study cannot be read ({err})") from None
    rows = read_results(out_dir)
    if not study.trials:
        if rows:
            notes.append(rebuild_study(study, rows, spec))
        else:
            for entry in spec.enqueued:
                study.enqueue_trial(entry["params"], user_attrs={"origin": entry["origin"]})
    check_study_matches(study, rows, where)
    return study, storage, notes


def _tune(spec: SearchSpec, out_dir: Path, study, run_index: int, rows: list[dict], *, worker_setup,
          verbose: int) -> None:
    """Run the trials missing from ``rows`` (the finished ones) as one Tune run on the started Ray."""
    from ray.tune.search import ConcurrencyLimiter

    from anchoropt.progress import TrialProgress, ray_output
    from anchoropt.raytools import Resources, trainable
    from anchoropt.tracking import MLflowTarget, closing_trackers, tracking_callbacks, trial_namer

    searcher = StudySearcher(study, spec.search_space, spec.sampler_options.get("n_startup_trials", 0),
                             sampler_at=lambda position: make_sampler(spec.sampler, spec.draw_seed(position),
                                                                      spec.sampler_options))
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent) if spec.max_concurrent else searcher
    sched = None
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler
        sched = ASHAScheduler(time_attr="training_iteration", max_t=max(1, int(spec.max_epochs)),
                              grace_period=1, reduction_factor=2)
    trial = trainable(run_trial, Resources(spec.cpus_per_trial, spec.gpus_per_trial), base=spec.base,
                      worker_setup=worker_setup, report_in_thread=sched is None)
    trackers = tracking_callbacks(out_dir, MLflowTarget.from_dict(spec.mlflow),
                                  params_of=lambda config: trial_config(spec.base, config),
                                  outcome_of=lambda result: outcome(result, error=False),
                                  tags_of=lambda config: {"trial": str(config[NUMBER_KEY]), "origin": config[ORIGIN_KEY]})
    callbacks = [ResultsLog(out_dir / "results.jsonl", spec, run_index), *trackers]
    if not verbose:
        best = [r["hm"] for r in rows if r["status"] != "failed" and isinstance(r.get("hm"), (int, float))]
        callbacks.append(TrialProgress(f"search {out_dir.name}", spec.num_trials, done=len(rows),
                                       best=max(best) if best else None, metric=METRIC))
    with ray_output(verbose), closing_trackers(trackers):
        tuner = tune.Tuner(
            trial,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg, scheduler=sched,
                                        num_samples=spec.num_trials - len(rows), reuse_actors=True,
                                        trial_name_creator=trial_namer(lambda c: f"trial-{c[RUN_KEY]:04d}")),
            run_config=tune.RunConfig(
                name=f"run-{run_index}", storage_path=str(out_dir / "ray"), verbose=verbose, callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        grid = tuner.fit()
    if grid.num_errors and verbose:
        print(f"{grid.num_errors} trial(s) failed")
