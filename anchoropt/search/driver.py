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

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.search import Searcher

from anchoropt.config import TrainConfig
from anchoropt.io import check_output_dir
from anchoropt.search.ledger import (ResultsLog, check_study_matches, lost_trials, open_storage, read_results,
                                     rebuild_study, reconcile, repair_journal)
from anchoropt.search.outputs import SearchResult, write_outputs
from anchoropt.search.spec import SearchError, SearchSpec, make_sampler, new_spec, now
from anchoropt.search.trial import (METRIC, NUMBER_KEY, ORIGIN_KEY, RUN_KEY, SEARCH_KEY, StudySearcher, outcome, run_trial,
                                    trial_config)


INFRA_RETRIES = 3  # runs re-queuing trials lost with their actor or node, after the first


@dataclass
class Search:
    """One search of a call, between its checks and its outputs: ``out_dir``, its ``spec``, its
    Optuna ``study`` and storage, the ledger ``rows`` of its finished trials, repair ``notes``
    for its next run entry, and ``made``: what a new search wrote, removed if the call fails
    before its first trial."""

    out_dir: Path
    spec: SearchSpec
    made: list[Path] = field(default_factory=list)
    study: Any = None
    storage: Any = None
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    result: SearchResult | None = None  # its outputs, once written in this call

    @property
    def trials_left(self) -> int:
        return self.spec.num_trials - len(self.rows)


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
        scheduler: ``none`` or ``asha`` (early stopping on the per-epoch ``hm``, rungs from the
            epochs by :func:`asha_rungs`; stopped trials are PRUNED in the study and never best).
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
    request = dict(space=space, out=out, num_trials=num_trials, base=base, objective=objective, sampler=sampler,
                   seed=seed, scheduler=scheduler, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                   max_concurrent=max_concurrent, storage=storage, enqueue=enqueue, resume=resume)
    results = run_searches([request], address=address, num_cpus=num_cpus, worker_setup=worker_setup,
                           verbose=verbose, mlflow=mlflow, dry_run=dry_run)
    if results is None:
        return None
    if print_summary:
        print(results[0].summary())
    return results[0]


def run_searches(requests: list[dict[str, Any]], *, address: str | None = None, num_cpus: int | None = None,
                 worker_setup: Callable[[], None] | None = None, verbose: int = 0,
                 mlflow: str | bool | None = None, dry_run: bool = False,
                 label: str | None = None) -> list[SearchResult] | None:
    """Run (or resume) several searches on one Ray, their trials in one Tune run, and write each one's outputs.

    Each request holds :func:`run_search`'s search arguments (``space``, ``out``, ``num_trials``,
    ``base``, ``objective``, ``sampler``, ``seed``, ``scheduler``, ``cpus_per_trial``,
    ``gpus_per_trial``, ``max_concurrent``, ``storage``, ``enqueue``, ``resume``). Every search is
    checked before Ray starts. Searches without a scheduler and with the same resources and
    concurrency share one Tune run: the first search's trials are drawn first, then the next
    one's, so each draws the trials it would draw alone, while the workers, their imports and
    loaded backbones stay warm from one search to the next and no slot waits for a search's last
    trial (``reuse_actors``). An ASHA search runs alone (its rungs compare its own trials only).
    ``label`` names the progress bar (default: the search folder's name, or ``N searches``).

    Returns:
        One :class:`SearchResult` per request, in order (None for a dry run). A search's
        ``wall_time_s`` is the time from the call's start to the end of its last trial.

    Raises:
        as :func:`run_search`, for the first bad request, before any trial of any search starts.
    """
    import ray

    started = time.time()
    started_ray = not ray.is_initialized()  # a Ray already initialised in this process is used as is
    searches: list[Search] = []
    try:
        for request in requests:
            search = _prepare(mlflow=mlflow, dry_run=dry_run, **request)
            if search is not None:
                searches.append(search)
        if dry_run:
            return None
        for search in searches:
            if search.made:
                _start_ray(search.spec, address, num_cpus, verbose)
                search.out_dir.mkdir(parents=True, exist_ok=True)
                search.spec.write(search.out_dir)
            search.study, search.storage, search.notes = _open_study(search.spec, search.out_dir)
            search.rows = reconcile(search.study, search.storage, search.out_dir, search.spec)
        for group in _shared_runs(searches):
            _run_trials(group, address, num_cpus, worker_setup, verbose,
                        label or (f"search {group[0].out_dir.name}" if len(group) == 1 else f"{len(group)} searches"))
    except Exception:
        for search in searches:  # no half-made search blocks the corrected command
            for path in search.made:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    results = []
    for search in searches:
        result = search.result
        if result is None or result.n_done != len(search.rows):
            result = write_outputs(search.out_dir, spec=search.spec, study=search.study, rows=search.rows)
        ends = [r["finished_at"] for r in search.rows if (r.get("finished_at") or 0) >= started]
        result.wall_time_s = (max(ends) if ends else time.time()) - started
        results.append(result)
    return results


def _prepare(space=None, out=None, num_trials=None, base=None, *, objective="val", sampler="tpe", seed=0,
             scheduler="none", cpus_per_trial=None, gpus_per_trial=None, max_concurrent=None, storage=None,
             enqueue=(), resume=None, mlflow=None, dry_run=False) -> Search | None:
    """One request checked (arguments, folder, tracking store), before Ray starts; None for a dry
    run (its plan printed). A new search's ``made`` lists what it will write."""
    if resume is not None:
        out_dir = Path(resume).expanduser().resolve()
        spec = _resumed_spec(out_dir, num_trials, max_concurrent, cpus_per_trial, gpus_per_trial)
        if dry_run:
            return _dry_run(spec, out_dir, resume=True)
        _check_outputs(spec, out_dir, "--resume")
        _choose_tracking(spec, out_dir, mlflow)
        return Search(out_dir, spec)
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
    made = [out_dir] if not out_dir.exists() else [out_dir / "search.json", out_dir / "study.journal"]
    return Search(out_dir, spec, made=made)


def _shared_runs(searches: list[Search]) -> list[list[Search]]:
    """The searches grouped into Tune runs: those without a scheduler and with equal resources and
    concurrency share one; each ASHA search has its own."""
    groups: dict[Any, list[Search]] = {}
    for search in searches:
        spec = search.spec
        key = (spec.cpus_per_trial, spec.gpus_per_trial, spec.max_concurrent) if spec.scheduler == "none" \
            else id(search)
        groups.setdefault(key, []).append(search)
    return list(groups.values())


def _run_trials(searches: list[Search], address: str | None, num_cpus: int | None, worker_setup,
                verbose: int, label: str) -> None:
    """The searches' missing trials in one Tune run, then runs re-queuing trials lost with their actor
    or node (up to :data:`INFRA_RETRIES`); each search's ``search.json`` gets a run entry per Tune
    run it takes part in, and its ``rows`` are brought up to date."""
    for _ in range(1 + INFRA_RETRIES):  # the runs after the first re-run trials lost with their actor or node
        pending = [s for s in searches if s.trials_left > 0]
        if not pending:
            return
        _start_ray(pending[0].spec, address, num_cpus, verbose)
        for search in pending:
            search.spec.runs.append({"run": len(search.spec.runs), "started": now(),
                                     "trials_before": len(search.rows), "trials_asked": search.trials_left,
                                     "max_concurrent": search.spec.max_concurrent,
                                     **({"notes": search.notes} if search.notes else {})})
            search.notes, search.made = [], []  # from here the folder holds a search to resume
            search.spec.write(search.out_dir)
        _tune(pending, worker_setup=worker_setup, verbose=verbose, label=label)
        for search in pending:
            search.spec.runs[-1]["finished"] = now()
            search.spec.write(search.out_dir)
            search.rows = reconcile(search.study, search.storage, search.out_dir, search.spec)
            lost = lost_trials(search.out_dir)
            if lost and search.trials_left > 0:
                print(f"{search.out_dir}: {len(lost)} trial(s) lost with their actor or node (not failures): "
                      f"re-running {', '.join(str(n) for n in sorted(lost))} with the same parameters")


ASHA_REDUCTION = 2  # ASHA's reduction factor: each rung keeps the top half


def asha_rungs(spec: SearchSpec) -> dict[str, int]:
    """ASHA's ``max_t``, ``grace_period`` and ``reduction_factor`` sized from the epochs: no rung
    before the learning-rate warm-up ends (``warmup_epochs``; an HM read during warm-up says little
    of where a configuration ends) and none before a quarter of the epochs, so a trial is first
    judged on at least a quarter of the epochs and at most two rungs (a quarter, a half) come
    before the end (10 epochs: rungs at 3 and 6)."""
    max_t = max(1, int(spec.max_epochs))
    grace = max(int(spec.base.get("warmup_epochs", 0)) + 1, math.ceil(max_t / 4))
    return {"max_t": max_t, "grace_period": min(grace, max_t), "reduction_factor": ASHA_REDUCTION}


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


def _tune(searches: list[Search], *, worker_setup, verbose: int, label: str) -> None:
    """Run the trials missing from each search's ``rows`` as one Tune run on the started Ray (Tune's
    folders under the first search's ``ray/``): one :class:`StudySearcher` per search behind a
    :class:`SearchesSearcher`, and each search's ledger and trackers seeing only its own trials
    (:class:`ForSearch`)."""
    from ray.tune.search import ConcurrencyLimiter

    from anchoropt.progress import TrialProgress, ray_output
    from anchoropt.raytools import Resources, trainable
    from anchoropt.tracking import MLflowTarget, closing_trackers, tracking_callbacks, trial_namer

    first = searches[0].spec
    searchers, callbacks, trackers = [], [], []
    for index, search in enumerate(searches):
        spec = search.spec
        searchers.append(StudySearcher(search.study, spec.search_space, spec.sampler_options.get("n_startup_trials", 0),
                                       sampler_at=lambda position, spec=spec: make_sampler(
                                           spec.sampler, spec.draw_seed(position), spec.sampler_options)))
        own = tracking_callbacks(search.out_dir, MLflowTarget.from_dict(spec.mlflow),
                                 params_of=lambda config, base=spec.base: trial_config(base, config),
                                 outcome_of=lambda result: outcome(result, error=False),
                                 tags_of=lambda config: {"trial": str(config[NUMBER_KEY]), "origin": config[ORIGIN_KEY]})
        trackers += own
        # the ledger after the trackers: an interruption between them leaves the trial out of the ledger, so
        # it is re-run into the same tracking runs, never recorded done beside a run ended as KILLED
        callbacks += [ForSearch(cb, index) for cb in
                      [*own, ResultsLog(search.out_dir / "results.jsonl", spec, len(spec.runs) - 1),
                       OutputsWhenDone(search)]]
    searcher = SearchesSearcher(searchers, [s.trials_left for s in searches])
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=first.max_concurrent) if first.max_concurrent else searcher
    sched = None
    if first.scheduler == "asha":  # alone in its Tune run (_shared_runs)
        from ray.tune.schedulers import ASHAScheduler
        rungs = asha_rungs(first)
        sched = ASHAScheduler(time_attr="training_iteration", max_t=rungs["max_t"],
                              grace_period=rungs["grace_period"], reduction_factor=rungs["reduction_factor"])
    trial = trainable(run_trial, Resources(first.cpus_per_trial, first.gpus_per_trial),
                      bases=[s.spec.base for s in searches], worker_setup=worker_setup,
                      report_in_thread=sched is None)
    if not verbose:
        best = [r["hm"] for r in searches[0].rows if r["status"] == "complete" and isinstance(r.get("hm"), (int, float))]
        callbacks.append(TrialProgress(label, sum(s.spec.num_trials for s in searches),
                                       done=sum(len(s.rows) for s in searches),
                                       best=max(best) if best and len(searches) == 1 else None,
                                       metric=METRIC if len(searches) == 1 else None,
                                       counts=lambda last: outcome(last, False)[0] == "complete"))
    storage = searches[0].out_dir / "ray"
    with ray_output(verbose), closing_trackers(trackers):
        tuner = tune.Tuner(
            trial,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg, scheduler=sched,
                                        num_samples=sum(s.trials_left for s in searches), reuse_actors=True,
                                        trial_name_creator=trial_namer(lambda c: f"trial-{c[RUN_KEY]:04d}")),
            run_config=tune.RunConfig(
                name=f"run-{len(first.runs) - 1}", storage_path=str(storage), verbose=verbose, callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        grid = tuner.fit()
    if grid.num_errors and verbose:
        print(f"{grid.num_errors} trial(s) failed")


class SearchesSearcher(Searcher):
    """Ray Tune searcher drawing the trials of several searches in one Tune run: the first search's
    until its ``budgets[0]`` trials are drawn (or its sampler has no more), then the next one's.
    Each trial's config carries its search's index (:data:`SEARCH_KEY`); results go back to the
    searcher that drew it."""

    def __init__(self, searchers: list[Searcher], budgets: list[int]):
        super().__init__(metric=METRIC, mode="max")
        self.searchers, self.left = searchers, list(budgets)
        self.owner: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for index, searcher in enumerate(self.searchers):
            if self.left[index] <= 0:
                continue
            config = searcher.suggest(trial_id)
            if config == Searcher.FINISHED:
                self.left[index] = 0
                continue
            if config is None:
                return None
            self.left[index] -= 1
            self.owner[trial_id] = index
            return {**config, SEARCH_KEY: index}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.owner:
            self.searchers[self.owner.pop(trial_id)].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Nothing: the studies and the ledgers are the searches' state (a resume never restores Tune's)."""


class OutputsWhenDone(tune.Callback):
    """Writes a search's outputs (:func:`write_outputs`) in the driver the moment its ledger holds
    its whole budget, during the Tune run: a finished search has its best configuration even when a
    later search of a shared run is interrupted, and the driver writes it while other searches'
    trials train. A failure here is left to the writing after the run, which raises it."""

    def __init__(self, search: Search):
        self.search = search

    def on_trial_complete(self, iteration, trials, trial, **info):
        search = self.search
        if search.result is not None:
            return
        rows = read_results(search.out_dir)
        if len(rows) < search.spec.num_trials:
            return
        try:
            search.result = write_outputs(search.out_dir, spec=search.spec, study=search.study, rows=rows)
        except Exception:  # noqa: BLE001  (written again after the run, where the error is raised)
            search.result = None

    on_trial_error = on_trial_complete


class ForSearch(tune.Callback):
    """A Tune callback seeing only the trials of one search (``index``) of a shared Tune run."""

    def __init__(self, callback: tune.Callback, index: int):
        self.callback, self.index = callback, index

    def _mine(self, trial) -> bool:
        return trial.config.get(SEARCH_KEY) == self.index

    def setup(self, **info):
        self.callback.setup(**info)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._mine(trial):
            self.callback.on_trial_start(iteration, trials, trial, **info)

    def on_trial_restore(self, iteration, trials, trial, **info):
        if self._mine(trial):
            self.callback.on_trial_restore(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._mine(trial):
            self.callback.on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._mine(trial):
            self.callback.on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._mine(trial):
            self.callback.on_trial_error(iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        self.callback.on_experiment_end(trials, **info)
