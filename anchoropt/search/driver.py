"""Hyperparameter search: Optuna proposes, Ray Tune distributes (``anchoropt search``).

One search lives in one folder ``DIR``:

- ``search.json``: what was asked (space, base configuration, objective, sampler, seed, resources,
  storage, study name, number of trials) and one entry per run (first run and each resume);
- ``study.journal``: the Optuna study (unless ``storage`` names an RDB URL), outliving the run;
- ``results.jsonl``: one line per finished trial, appended and fsync'ed by the driver the moment
  Tune reports the trial complete or failed. It is the record of what is done: a killed search
  (Ctrl-C, ``kill -9``) resumes with :func:`run_search` ``(resume=DIR)`` and runs only the trials
  missing from it; trials that were in flight are re-run with the same parameters;
- ``ray/run-K/``: Ray Tune's own experiment folders;
- outputs: ``trials.csv`` / ``trials.parquet``, ``best_config.yaml`` (only TrainConfig keys:
  ``anchoropt train --config DIR/best_config.yaml`` accepts it), ``importances.csv``,
  ``history.png``, ``hm_vs_anchors.png``, ``summary.json``.

Every trial runs :func:`anchoropt.train.train` with the base configuration updated by the drawn
parameters and reports ``hm``, ``acc_base``, ``acc_novel`` (percent) after every epoch through
``ray.tune.report``. All trials share the base configuration's absolute ``cache_dir``: image
features are computed once per image set (``anchoropt.features``, under a file lock),
and Stage I once per distinct Stage I configuration (``anchoropt.train.stage1_cache_path``).
On a multi-node cluster, ``cache_dir``, ``data_root`` and the search folder must be on a file system
every node sees (relative paths of the base configuration are made absolute first).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml
from ray import tune

from anchoropt.config import ConfigError, TrainConfig, make_config
from anchoropt.search.space import SearchSpace, SpaceError, load_space, parse_space
from anchoropt.yamlio import read_yaml

OBJECTIVES = ("val", "test")
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "bruteforce")
SCHEDULERS = ("none", "asha")
METRIC = "hm"
NUMBER_KEY = "_optuna_trial"  # config key carrying the Optuna trial number into the trial
PATH_KEYS = ("data_root", "descriptions", "descriptions_dir", "cache_dir")
FINISHED = ("complete", "stopped", "failed")
STALE_LOCK_S = 5


class SearchError(ConfigError):
    """A search that cannot start or resume (bad folder, options, or space)."""


@dataclass
class SearchResult:
    """What a search produced. ``trials`` has one row per finished trial (``trials.csv``)."""

    out_dir: Path
    objective: str
    num_trials: int
    n_complete: int  # finished without error (early-stopped ones included)
    n_failed: int
    best_trial: int | None
    best_hm: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None
    trials: pd.DataFrame = field(repr=False)
    wall_time_s: float = 0.0
    n_stopped: int = 0  # stopped early by the ASHA scheduler

    @property
    def n_done(self) -> int:
        return self.n_complete + self.n_failed

    def summary(self) -> str:
        lines = [f"search {self.out_dir}: {self.n_done}/{self.num_trials} trials done "
                 f"({self.n_complete} complete"
                 f"{f' ({self.n_stopped} stopped early by ASHA)' if self.n_stopped else ''}, "
                 f"{self.n_failed} failed), objective {self.objective}, "
                 f"{self.wall_time_s:.1f} s"]
        if self.best_trial is None:
            lines.append("no trial completed: no best configuration")
        else:
            params = "  ".join(f"{k}={_fmt(v)}" for k, v in self.best_params.items())
            lines.append(f"best HM {self.best_hm:.2f} (trial {self.best_trial}): {params}")
            lines.append(f"best config: {self.out_dir / 'best_config.yaml'}")
        if self.n_done < self.num_trials:
            lines.append(f"incomplete: resume with  anchoropt search --resume {self.out_dir}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the trial (runs in a Ray worker process)
# ------------------------------------------------------------------------------------------------
def _trial(config: dict, base: dict, cpus: float, worker_setup: Callable[[], None] | None = None) -> None:
    """Ray Tune function trainable: one AnchorOPT training run, reported every epoch."""
    import torch
    from ray import tune

    import anchoropt.train as training

    if worker_setup is not None:
        worker_setup()
    torch.set_num_threads(max(1, int(round(cpus))))
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = make_config({**base, **params}, source="search trial")
    start = time.time()  # in-trial time (train_s): features, Stage I, Stage II, evaluations
    reported: list[dict] = []
    in_report = [0.0]  # seconds spent inside ray.tune.report (Ray's share of the in-trial time)

    def report(m: dict) -> None:
        now = time.time()
        metrics = {"hm": m["hm"], "acc_base": m["acc_base"], "acc_novel": m["acc_novel"], "epoch": m["epoch"],
                   "loss": m["loss"], "train_s": now - start, "report_s": in_report[0]}
        reported.append(metrics)
        tune.report(metrics)
        in_report[0] += time.time() - now

    record = training.train(cfg, report=report)
    if not reported:  # no epochs (e.g. epochs=0): report the final evaluation once
        m = record["metrics"]
        tune.report({"hm": m["hm"], "acc_base": m["acc_base"], "acc_novel": m["acc_novel"], "epoch": 0,
                     "loss": float("nan"), "train_s": time.time() - start})


class _SpaceFn:
    """Picklable define-by-run function: the space's values plus the Optuna trial number."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        values = self.space.define_by_run(trial)
        values[NUMBER_KEY] = trial.number
        return values


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
def run_search(space: str | Path | dict | None = None, out: str | Path | None = None,
               num_trials: int | None = None, base: TrainConfig | dict | None = None, *,
               objective: str = "val", sampler: str = "tpe", seed: int = 0, scheduler: str = "none",
               cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: int | None = None,
               address: str | None = None, storage: str | None = None, resume: str | Path | None = None,
               num_cpus: int | None = None, worker_setup: Callable[[], None] | None = None,
               verbose: int = 0, print_summary: bool = False) -> SearchResult:
    """Run (or resume) a search and write its outputs.

    Args:
        space: YAML file (or the equivalent mapping) of the parameters to search; it is stored in
            ``out/search.json`` so that a resume does not depend on the file.
        out: the search folder (must not hold a search already: resume it instead).
        num_trials: total number of trials (on resume: optionally raise the total).
        base: base configuration (TrainConfig or dict of its keys); the drawn parameters update it.
        objective: ``val`` (leak-free pseudo base/novel split, SPEC section 8) or ``test``.
        sampler: Optuna sampler name (``tpe``, ``random``, ``cmaes``, ``qmc``, ``gp``, ``bruteforce``),
            seeded with ``seed``.
        scheduler: ``none`` or ``asha`` (early stopping on the per-epoch ``hm``).
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (fractions allowed).
        max_concurrent: at most this many trials at once (default: as resources allow).
        address: join this Ray cluster; else a local Ray with ``num_cpus`` CPUs is started
            (an already initialised Ray in this process is used as is).
        storage: Optuna RDB URL (``sqlite:///...``, ``postgresql://...``); default a journal file
            ``out/study.journal``.
        resume: a search folder to resume; the other arguments but ``num_trials``, ``address``,
            ``num_cpus``, ``max_concurrent``, ``worker_setup`` and ``verbose`` come from it.
        worker_setup: picklable function run in the worker at the start of each trial.

    Raises:
        SearchError / SpaceError / ConfigError: bad arguments, space or folder.
    """
    started = time.time()
    if resume is not None:
        out_dir = Path(resume).expanduser().resolve()
        meta = _read_meta(out_dir)
        if num_trials is not None:
            if num_trials < meta["num_trials"]:
                raise SearchError(f"--num-trials {num_trials} is below the search's {meta['num_trials']}")
            meta["num_trials"] = num_trials
        if max_concurrent is not None:
            meta["max_concurrent"] = max_concurrent
        space_obj = parse_space(meta["space"], source=meta["space_source"])
    else:
        if space is None or out is None or num_trials is None:
            raise SearchError("a new search needs a space, an output folder and a number of trials")
        out_dir = Path(out).expanduser().resolve()
        if (out_dir / "search.json").is_file():
            raise SearchError(f"{out_dir} already holds a search: resume it with --resume {out_dir}")
        space_obj, space_raw, space_source = _read_space(space)
        meta = _new_meta(space_obj, space_raw, space_source, out_dir, num_trials, base, objective=objective,
                         sampler=sampler, seed=seed, scheduler=scheduler, cpus_per_trial=cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent, storage=storage)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_meta(out_dir, meta)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_storage = _storage(meta, out_dir)
    study = optuna.create_study(storage=study_storage, study_name=meta["study_name"], direction="maximize",
                                load_if_exists=True)
    rows = _reconcile(study, out_dir, meta)
    remaining = meta["num_trials"] - len(rows)
    run_index = len(meta["runs"])
    if remaining > 0:
        meta["runs"].append({"run": run_index, "started": _now(), "trials_before": len(rows),
                             "trials_asked": remaining, "sampler_seed": meta["seed"] + 1000 * run_index})
        _write_meta(out_dir, meta)
        _tune(meta, out_dir, space_obj, study_storage, run_index, remaining, address=address, num_cpus=num_cpus,
              worker_setup=worker_setup, verbose=verbose)
        meta["runs"][-1]["finished"] = _now()
        _write_meta(out_dir, meta)
        study = optuna.load_study(study_name=meta["study_name"], storage=study_storage)
        rows = _reconcile(study, out_dir, meta)
    result = write_outputs(out_dir, meta=meta, study=study, rows=rows)
    result.wall_time_s = time.time() - started
    if print_summary:
        print(result.summary())
    return result


def _tune(meta: dict, out_dir: Path, space: SearchSpace, study_storage, run_index: int, num_samples: int, *,
          address: str | None, num_cpus: int | None, worker_setup, verbose: int) -> None:
    import ray
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=_SpaceFn(space), metric=METRIC, mode="max",
                            sampler=make_sampler(meta["sampler"], meta["seed"] + 1000 * run_index),
                            study_name=meta["study_name"], storage=study_storage)
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=meta["max_concurrent"]) \
        if meta["max_concurrent"] else searcher
    sched = None
    if meta["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        sched = ASHAScheduler(time_attr="training_iteration", max_t=max(1, int(meta["max_epochs"])),
                              grace_period=1, reduction_factor=2)
    trainable = tune.with_parameters(_trial, base=meta["base"], cpus=meta["cpus_per_trial"],
                                     worker_setup=worker_setup)
    trainable = tune.with_resources(trainable, {"cpu": meta["cpus_per_trial"], "gpu": meta["gpus_per_trial"]})
    from anchoropt.raytools import ensure_ray

    started_ray = not ray.is_initialized()  # a Ray already initialised in this process is used as is
    ensure_ray(address=address, num_cpus=num_cpus)
    try:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg, scheduler=sched,
                                        num_samples=num_samples, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"run-{run_index}", storage_path=str(out_dir / "ray"), verbose=verbose,
                callbacks=[_ResultsLog(out_dir / "results.jsonl", meta, run_index)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
        grid = tuner.fit()
        if grid.num_errors and verbose:
            print(f"{grid.num_errors} trial(s) failed")
    finally:
        if started_ray:
            ray.shutdown()


def make_sampler(name: str, seed: int):
    """A seeded Optuna sampler by name (OptunaSearch ignores its own seed when given a sampler)."""
    import optuna
    import optuna.samplers as s

    makers = {"tpe": lambda: s.TPESampler(seed=seed), "random": lambda: s.RandomSampler(seed=seed),
              "cmaes": lambda: s.CmaEsSampler(seed=seed, warn_independent_sampling=False),
              "qmc": lambda: s.QMCSampler(seed=seed, warn_independent_sampling=False),
              "gp": lambda: s.GPSampler(seed=seed), "bruteforce": lambda: s.BruteForceSampler(seed=seed)}
    if name not in makers:
        raise SearchError(f"unknown sampler '{name}' (expected one of {', '.join(SAMPLERS)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return makers[name]()


class _ResultsLog(tune.Callback):
    """Tune callback (in the driver): append one fsync'ed JSON line per finished trial."""

    def __init__(self, path: Path, meta: dict, run_index: int):
        self.path, self.meta, self.run_index = path, meta, run_index
        self.starts: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trial, _error_message(trial))

    def _write(self, trial, error: str | None) -> None:
        config = dict(trial.config)
        params = {k: v for k, v in config.items() if not k.startswith("_")}
        last = dict(trial.last_result or {})
        epochs = params.get("epochs", self.meta["base"]["epochs"])
        if error is not None:
            status = "failed"
        elif METRIC not in last:
            status, error = "failed", "the trial reported no metrics"
        else:
            status = "stopped" if self.meta["scheduler"] == "asha" and last.get("epoch", 0) < epochs else "complete"
        end = time.time()
        start = self.starts.get(trial.trial_id, end)
        row = {"trial": config.get(NUMBER_KEY), "tune_trial_id": trial.trial_id, "run": self.run_index,
               "status": status, "hm": _num(last.get("hm")) if status != "failed" else None,
               "acc_base": _num(last.get("acc_base")) if status != "failed" else None,
               "acc_novel": _num(last.get("acc_novel")) if status != "failed" else None,
               "epochs_done": last.get("epoch"), "error": error,
               "wall_time_s": round(end - start, 3), "started_at": round(start, 3), "finished_at": round(end, 3),
               "train_s": _round(last.get("train_s")), "report_s": _round(last.get("report_s")),
               "objective": self.meta["objective"], "params": params, "finished": _now()}
        _append_line(self.path, row)


def _error_message(trial) -> str:
    """One line naming the exception of a failed trial (from its Ray error file)."""
    text = ""
    try:
        err = trial.get_pickled_error()
        if err is not None:
            cause = getattr(err, "cause", None) or err
            text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    except Exception:  # noqa: BLE001  (best effort: fall back to the text file)
        text = ""
    if not text and trial.error_file and Path(trial.error_file).is_file():
        lines = [ln.strip() for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    return text[:500] or "unknown error"


# ------------------------------------------------------------------------------------------------
# folder, study and results log
# ------------------------------------------------------------------------------------------------
def _read_space(space) -> tuple[SearchSpace, dict, str]:
    if isinstance(space, SearchSpace):
        raise SearchError("pass the space as a YAML path or mapping, so that it can be stored with the search")
    if isinstance(space, dict):
        return parse_space(space, "<space>"), space, "<space>"
    path = Path(space).expanduser()
    obj = load_space(path)
    return obj, read_yaml(path, mapping=False), str(path.resolve())


def _new_meta(space: SearchSpace, space_raw: dict, space_source: str, out_dir: Path, num_trials: int,
              base, **opts) -> dict:
    if opts["objective"] not in OBJECTIVES:
        raise SearchError(f"unknown objective '{opts['objective']}' (expected val or test)")
    if opts["scheduler"] not in SCHEDULERS:
        raise SearchError(f"unknown scheduler '{opts['scheduler']}' (expected none or asha)")
    make_sampler(opts["sampler"], 0)
    if not isinstance(num_trials, int) or num_trials < 1:
        raise SearchError(f"the number of trials must be >= 1, got {num_trials!r}")
    if opts["cpus_per_trial"] <= 0 or opts["gpus_per_trial"] < 0:
        raise SearchError("cpus per trial must be > 0 and gpus per trial >= 0")
    if opts["max_concurrent"] is not None and opts["max_concurrent"] < 1:
        raise SearchError("max concurrent trials must be >= 1")
    values = base.to_dict() if isinstance(base, TrainConfig) else dict(base or {})
    if values.get("protocol", "base2novel") != "base2novel":
        raise SearchError(f"search scores HM under protocol=base2novel, got protocol={values['protocol']}; "
                          "tune on the source dataset, then benchmark the best config cross-dataset")
    values["objective"] = opts["objective"]
    cfg = make_config(values, source="base config")
    for key in PATH_KEYS:  # trials run in Ray workers with another working directory
        if getattr(cfg, key):
            setattr(cfg, key, str(Path(getattr(cfg, key)).expanduser().resolve()))
    if cfg.pretrained and (Path(cfg.pretrained).expanduser().is_file()):
        cfg.pretrained = str(Path(cfg.pretrained).expanduser().resolve())
    methods = space.get("method").values() if space.get("method") else [cfg.method]
    if "zeroshot" in methods:
        raise SpaceError(f"{space.source}: method: zero-shot has no training epochs to search; "
                         f"search method coop or anchoropt")
    _check_space_against_base(space, cfg)
    if Path(cfg.data_root).is_dir():  # fail fast here rather than in every trial (DataError names the cause)
        from anchoropt.data import build_dataset
        build_dataset(cfg.data_root, cfg.dataset)
    storage = opts.pop("storage")
    if storage:
        if "://" not in storage:
            raise SearchError(f"storage must be an RDB URL such as sqlite:///path.db, got {storage!r}")
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////") and ":memory:" not in storage:
            # absolute, so that a resume from another folder finds it
            storage = "sqlite:///" + str(Path(storage[len("sqlite:///"):]).expanduser().resolve())
    digest = hashlib.sha1(str(out_dir).encode()).hexdigest()[:8]
    return {"version": 1, "created": _now(), "space_source": space_source, "space": space_raw,
            "base": cfg.to_dict(), "num_trials": num_trials, **opts, "storage": storage,
            "study_name": f"anchoropt-{out_dir.name}-{digest}",
            "max_epochs": space.max_value("epochs", cfg.epochs), "runs": []}


def _check_space_against_base(space: SearchSpace, cfg: TrainConfig) -> None:
    """Every value the space can give must make a valid configuration with the base."""
    for p in space.params:
        for value in p.values():
            try:
                make_config({**cfg.to_dict(), p.name: value}, source="space")
            except ConfigError as err:
                raise SpaceError(f"{space.source}: {p.name}: value {value!r} is invalid: {err}") from None


def _storage(meta: dict, out_dir: Path):
    import optuna

    url = meta.get("storage")
    if url:
        return optuna.storages.RDBStorage(url)
    journal = optuna.storages.journal
    path = str(out_dir / "study.journal")
    # a driver killed (-9) while appending leaves the lock behind: writers hold it for milliseconds, so
    # a lock older than a few seconds is stale (Optuna's default waits 30 s before breaking it)
    lock = journal.JournalFileSymlinkLock(path, grace_period=STALE_LOCK_S)
    return optuna.storages.JournalStorage(journal.JournalFileBackend(path, lock_obj=lock))


def _read_meta(out_dir: Path) -> dict:
    path = out_dir / "search.json"
    if not path.is_file():
        raise SearchError(f"{out_dir} is not a search folder (no search.json)")
    return json.loads(path.read_text())


def _write_meta(out_dir: Path, meta: dict) -> None:
    from anchoropt.io import save_json
    save_json(meta, out_dir / "search.json")


def _append_line(path: Path, row: dict) -> None:
    line = json.dumps(row, default=str, allow_nan=True) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_results(out_dir: str | Path) -> list[dict]:
    """Finished trials of a search folder, one per Optuna trial number (the last line wins)."""
    path = Path(out_dir) / "results.jsonl"
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
            if row.get("trial") is not None and row.get("status") in FINISHED:
                rows[int(row["trial"])] = row
    return [rows[k] for k in sorted(rows)]


def _reconcile(study, out_dir: Path, meta: dict) -> list[dict]:
    """Bring the study and the results log into agreement after an interruption.

    - a study trial still RUNNING whose result is in the log: told its logged outcome;
    - a RUNNING trial missing from the log (in flight when the driver died): marked failed with
      ``interrupted`` and its parameters enqueued, so the next run re-runs it first;
    - a finished study trial missing from the log (killed between Optuna and the log): logged
      from the study.
    Returns the finished rows (one per trial number)."""
    from optuna.trial import TrialState

    rows = {r["trial"]: r for r in read_results(out_dir)}
    storage = study._storage
    for t in study.get_trials(deepcopy=False):
        row = rows.get(t.number)
        if t.state == TrialState.RUNNING:
            if row is not None:
                ok = row["status"] != "failed" and row.get("hm") is not None
                storage.set_trial_state_values(t._trial_id, TrialState.COMPLETE if ok else TrialState.FAIL,
                                               [row["hm"]] if ok else None)
            else:
                storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        elif t.state in (TrialState.COMPLETE, TrialState.FAIL) and row is None and \
                not t.user_attrs.get("interrupted"):
            row = {"trial": t.number, "tune_trial_id": None, "run": None,
                   "status": "complete" if t.state == TrialState.COMPLETE else "failed",
                   "hm": t.value, "acc_base": None, "acc_novel": None, "epochs_done": None,
                   "error": None if t.state == TrialState.COMPLETE else "failed (recovered from the study)",
                   "wall_time_s": None, "train_s": None, "objective": meta["objective"],
                   "params": _params_of(t, meta), "finished": _now()}
            _append_line(out_dir / "results.jsonl", row)
            rows[t.number] = row
    return [rows[k] for k in sorted(rows)]


def _params_of(t, meta: dict) -> dict:
    """The parameters of a study trial, fixed values of the space included."""
    space = parse_space(meta["space"], meta["space_source"])
    from optuna.trial import FixedTrial
    return space.define_by_run(FixedTrial(dict(t.params)))


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def write_outputs(out_dir: str | Path, meta: dict | None = None, study=None,
                  rows: list[dict] | None = None) -> SearchResult:
    """(Re)write the trials table, best configuration, importances and plots of a search folder."""
    out_dir = Path(out_dir)
    meta = meta or _read_meta(out_dir)
    rows = read_results(out_dir) if rows is None else rows
    if study is None:
        import optuna
        study = optuna.load_study(study_name=meta["study_name"], storage=_storage(meta, out_dir))
    table = trials_table(rows, meta)
    table.to_csv(out_dir / "trials.csv", index=False)
    _parquet_safe(table).to_parquet(out_dir / "trials.parquet", index=False)

    ok = table[table["status"].isin(["complete", "stopped"]) & table["hm"].notna()]
    pool = ok[ok["status"] == "complete"] if (ok["status"] == "complete").any() else ok
    best_trial = best_hm = best_cfg = None
    best_params: dict = {}
    if len(pool):
        best = pool.loc[pool["hm"].idxmax()]
        best_trial, best_hm = int(best["trial"]), float(best["hm"])
        best_params = next(r["params"] for r in rows if r["trial"] == best_trial)
        # Scored on test by default: the search objective stays in the header and in search.json.
        best_cfg = {**make_config({**meta["base"], **best_params}, source="best trial").to_dict(),
                    "objective": "test"}
        _write_best_config(out_dir / "best_config.yaml", best_cfg, meta, best_trial, best)
    importances = _importances(study, out_dir, meta)
    _plot_history(table, out_dir / "history.png", meta)
    _plot_hm_vs_anchors(table, out_dir / "hm_vs_anchors.png", meta)
    n_failed = int((table["status"] == "failed").sum())
    result = SearchResult(out_dir=out_dir, objective=meta["objective"], num_trials=meta["num_trials"],
                          n_complete=len(table) - n_failed, n_failed=n_failed, best_trial=best_trial,
                          best_hm=best_hm, best_params=best_params, best_config=best_cfg, trials=table,
                          n_stopped=int((table["status"] == "stopped").sum()))
    from anchoropt.io import save_json
    save_json({"objective": meta["objective"], "num_trials": meta["num_trials"], "done": result.n_done,
               "complete": result.n_complete, "failed": n_failed, "best_trial": best_trial, "best_hm": best_hm,
               "best_params": best_params, "importances": importances, "sampler": meta["sampler"],
               "seed": meta["seed"], "scheduler": meta["scheduler"], "runs": len(meta["runs"])},
              out_dir / "summary.json")
    return result


def trials_table(rows: list[dict], meta: dict) -> pd.DataFrame:
    """One row per finished trial: trial, status, metrics, error, times, objective, then the parameters."""
    space = parse_space(meta["space"], meta["space_source"])
    names = space.names
    cols = ["trial", "status", "hm", "acc_base", "acc_novel", "epochs_done", "error", "wall_time_s", "train_s",
            "report_s", "objective", "run", "tune_trial_id"]
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in cols}
        for name in names:
            rec[name] = r.get("params", {}).get(name)
        records.append(rec)
    table = pd.DataFrame.from_records(records, columns=cols + names)
    for c in ("hm", "acc_base", "acc_novel", "wall_time_s", "train_s", "report_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing Python types (e.g. a categorical of numbers and strings) become strings."""
    table = table.copy()
    for c in table.columns:
        kinds = {type(v) for v in table[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[c] = table[c].map(lambda v: None if v is None else str(v))
    return table


def _write_best_config(path: Path, cfg: dict, meta: dict, trial: int, row) -> None:
    how = "leak-free pseudo base/novel split of the base classes" if meta["objective"] == "val" \
        else "base/novel test images"
    header = [f"# Best configuration of the search {path.parent}",
              f"# objective: {meta['objective']} ({how}, SPEC section 8)",
              f"# trial {trial}: HM {row['hm']:.2f} (base {_fmt(row['acc_base'])}, novel {_fmt(row['acc_novel'])}),"
              f" sampler {meta['sampler']} seed {meta['seed']}, {meta['num_trials']} trials",
              "# Use: anchoropt train --config best_config.yaml  (scores on the test images)"]
    from anchoropt.io import write_text
    text = "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False)
    write_text(text, path)


def _importances(study, out_dir: Path, meta: dict) -> dict[str, float]:
    """Importances (Optuna's PED-ANOVA) of the parameters over the completed
    trials; an empty table when fewer than two trials completed or nothing can be estimated."""
    import optuna
    from optuna.trial import TrialState

    result: dict[str, float] = {}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) >= 2:
        # PED-ANOVA: Optuna's fANOVA default would pull in scikit-learn for this one table
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        try:
            with warnings.catch_warnings():  # few trials: PED-ANOVA warns that its quantiles coincide
                warnings.simplefilter("ignore")
                result = {k: float(v) for k, v in
                          optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
        except (RuntimeError, ValueError, ZeroDivisionError):
            result = {}
    pd.DataFrame({"param": list(result), "importance": list(result.values())}).to_csv(
        out_dir / "importances.csv", index=False)
    return result


def _plot_history(table: pd.DataFrame, path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    t = table.sort_values("trial")
    ok = t[t["hm"].notna() & (t["status"] != "failed")]
    ax.scatter(ok["trial"], ok["hm"], s=18, label="trial HM")
    if len(ok):
        ax.step(ok["trial"], ok["hm"].cummax(), where="post", color="C1", label="best so far")
    failed = t[t["status"] == "failed"]
    if len(failed):
        low = ok["hm"].min() if len(ok) else 0.0
        ax.scatter(failed["trial"], [low] * len(failed), marker="x", color="C3", label="failed")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"HM (%), objective {meta['objective']}")
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_hm_vs_anchors(table: pd.DataFrame, path: Path, meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = table[table["hm"].notna() & (table["status"] != "failed")].copy()
    n = t["n_anchors"] if "n_anchors" in t else pd.Series([meta["base"]["n_anchors"]] * len(t), index=t.index)
    t["n_anchors_"] = n.fillna(meta["base"]["n_anchors"]).astype(float)
    fig, ax = plt.subplots(figsize=(6, 4))
    if "schedule" in t and t["schedule"].notna().any():
        for i, (sched, g) in enumerate(t.groupby(t["schedule"].fillna(meta["base"]["schedule"]))):
            ax.scatter(g["n_anchors_"], g["hm"], s=20, color=f"C{i}", label=str(sched))
        ax.legend(fontsize=8)
    else:
        ax.scatter(t["n_anchors_"], t["hm"], s=20)
    ax.set_xlabel("n_anchors")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"HM (%), objective {meta['objective']}")
    ax.set_title("HM against the number of anchors")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _round(v, digits: int = 3) -> float | None:
    v = _num(v)
    return None if v is None else round(v, digits)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
