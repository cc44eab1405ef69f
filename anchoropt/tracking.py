"""Experiment trackers of a search or benchmark, as Ray Tune callbacks (run in the driver).

- TensorBoard, always: each trial's per-epoch metrics (``hm``, ``acc_base``, ``acc_novel``,
  ``loss``, ``acc_anchor_*``; step = epoch) go to ``FOLDER/tensorboard/<trial name>/`` of the
  search or benchmark folder, flushed at every epoch, with the trial's configuration as
  TensorBoard hparams at its end: ``tensorboard --logdir FOLDER/tensorboard``. A re-run of a trial
  (a resume, a retry) replaces the event files of its earlier attempt, so each step appears once.
- MLflow, when a tracking URI is given (``--mlflow URI``; stored in the search's ``search.json``
  and the benchmark's ``benchmark.yaml``, so a resume keeps logging; ``--no-mlflow`` turns it
  off): one MLflow run per trial, found again by its name and reused when the trial is re-run,
  with the trial's full resolved configuration as params (logged once) and the per-epoch metrics
  above. Its status mirrors the trial: FINISHED, FAILED (the error in the tag ``error``), KILLED
  when the command was interrupted (or when a later run finds it still RUNNING: its process was
  killed), FINISHED with the tag ``pruned=true`` when the scheduler stopped it early.

The experiment name is fixed when the folder is created (:func:`experiment_name`: the folder's
path relative to where the command ran, and what it runs, e.g. ``results/toy11/searches/two_stage/toy_shape
(search of anchoropt_two_stage)``), so two folders never share one. The store is checked before Ray starts
(:func:`check_mlflow`): an empty URI, an unreachable server, a ``file:`` store MLflow 3 refuses, a
store that does not open (its database driver missing, its path not a database), a deleted
experiment of the same name each stop the command with one line.

Trial names come from :func:`trial_namer` (Tune's ``trial_name_creator``): ``trial-0003`` for the
fourth trial of a search (a retry of an interrupted or lost trial keeps the name of the trial it
re-runs), ``<method>.<dataset>.seed<k>`` for a benchmark cell.
"""
from __future__ import annotations

import math
import os
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from ray import tune

from anchoropt.errors import ConfigError, interrupt_of
from anchoropt.raytools import signals_deferred

CONNECT_TIMEOUT_S = 5.0  # a TCP connect to a live tracking server takes milliseconds
TRIAL_TAG = "anchoropt.trial"  # the MLflow tag that finds a trial's run again on a re-run

# what one trial's outcome is: "complete", "stopped" (early, by the scheduler) or "failed", and why
Outcome = Callable[[dict], tuple[str, "str | None"]]


class TrackingError(ConfigError):
    """The MLflow store cannot be used; the message names the URI and the fix."""


@dataclass(frozen=True)
class MLflowTarget:
    """Where a search or benchmark logs: an MLflow tracking ``uri`` and an ``experiment`` name."""

    uri: str
    experiment: str

    @classmethod
    def from_dict(cls, raw: dict | None) -> MLflowTarget | None:
        return cls(raw["uri"], raw["experiment"]) if raw else None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_uri(uri: str) -> str:
    """``uri`` with a relative ``sqlite:///`` path made absolute, so that a resume from another folder
    logs to the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    return uri


def experiment_name(folder: str | Path, what: str) -> str:
    """``<folder relative to the working directory> (<what>)``; an absolute path when the folder is
    elsewhere. ``what``: the search's method and schedule, or the benchmark suite."""
    folder = Path(folder).resolve()
    try:
        shown = folder.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = folder.as_posix()
    return f"{shown} ({what})"


def choose_target(given: str | bool | None, stored: dict | None, folder: str | Path,
                  what: str) -> MLflowTarget | None:
    """The MLflow target of a (new or resumed) run: ``given`` a URI (``--mlflow``; the stored
    experiment name is kept), False (``--no-mlflow``: none) or None (as stored; none when new)."""
    if given is False:
        return None
    if given is None:
        return MLflowTarget.from_dict(stored)
    experiment = stored["experiment"] if stored else experiment_name(folder, what)
    return MLflowTarget(resolve_uri(given), experiment)


def check_mlflow(target: MLflowTarget) -> None:
    """The store can be logged to: the URI is not empty, a server answers, a file store is allowed,
    the store opens (its database driver is installed, its path is a database) and no deleted
    experiment holds the name (MLflow keeps deleted names reserved).

    Raises:
        TrackingError: one line naming the URI (or experiment) and the fix.
    """
    uri = target.uri
    if not uri.strip():
        raise TrackingError("--mlflow needs a tracking URI (e.g. sqlite:///mlflow.db); it was given an empty one")
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.uri import is_local_uri

    if is_local_uri(uri) and not MLFLOW_ALLOW_FILE_STORE.get():
        raise TrackingError(f"--mlflow {uri}: MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true "
                            f"is set; or use a database store such as sqlite:///mlflow.db")
    if urlparse(uri).scheme in ("http", "https"):
        _check_server(uri)
    try:
        with _quick_http(), _quiet_mlflow():
            experiment = _client(uri).get_experiment_by_name(target.experiment)
    except Exception as err:  # noqa: BLE001  (any failure to open the store is the user's URI: a missing
        # database driver, a path that is not a database, a server that is not MLflow; one line, not a traceback)
        raise TrackingError(f"--mlflow {uri}: the store cannot be opened as an MLflow tracking store "
                            f"({type(err).__name__}: {_first_line(err)})") from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"--mlflow {uri}: the experiment '{target.experiment}' was deleted there (id "
                            f"{experiment.experiment_id}), and MLflow keeps its name: restore it (`mlflow experiments "
                            f"restore --experiment-id {experiment.experiment_id}`), purge it (`mlflow gc`), or use "
                            f"--no-mlflow")


def _check_server(uri: str) -> None:
    url = urlparse(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise TrackingError(f"--mlflow {uri}: no MLflow server answers at {url.hostname}:{port} ({reason}): start "
                            f"one (`mlflow server --port {port}`) or use --no-mlflow") from None


@contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP client retries a dead server for minutes; a check gives up at once."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(CONNECT_TIMEOUT_S)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow and its database migrations log their store set-up at INFO, and warn on the way to an error the
    check reports itself in one line: kept quiet while checking."""
    import logging

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.ERROR))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def epoch_metrics(result: dict) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) of a per-epoch report: ``loss``, ``hm`` and every ``acc_*`` key, finite values
    only, at step ``epoch``. A report without ``epoch`` (a benchmark cell's final scores) is step 0
    (the scores without training, e.g. zero-shot); None when nothing in it is a metric."""
    metrics = {k: float(v) for k, v in result.items()
               if (k in ("loss", "hm") or k.startswith("acc_")) and isinstance(v, (int, float))
               and not isinstance(v, bool) and math.isfinite(v)}
    if not metrics:
        return None
    step = result.get("epoch")
    return (step if isinstance(step, int) else 0), metrics


class TensorBoardLogger(tune.Callback):
    """Per-epoch metrics of each trial under ``root/<trial name>/`` (tensorboardX event files), on disk
    at every epoch.

    ``params_of(config)``: the trial's configuration, written as TensorBoard hparams at its end.

    Events are written with tensorboardX's synchronous ``EventsWriter``: its ``SummaryWriter`` hands
    them to a queue that a thread drains, so its ``flush`` may run before the epoch's events reach
    the file (they lagged an epoch, and an interruption could lose them).
    """

    def __init__(self, root: str | Path, params_of: Callable[[dict], dict]):
        self.root, self.params_of = Path(root), params_of
        self.writers: dict[str, Any] = {}
        self.steps: dict[str, int] = {}
        self.last: dict[str, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        from tensorboardX.event_file_writer import EventsWriter

        name = str(trial)
        self._close(name)
        folder = self.root / name
        for old in folder.glob("events.out.tfevents.*"):  # an earlier attempt: its steps are run again
            old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        self.writers[name] = EventsWriter(str(folder / "events"))  # events.out.tfevents.<time>.<host>
        self.steps[name], self.last[name] = -1, {}

    on_trial_restore = on_trial_start

    @signals_deferred()  # a Ctrl-C or SIGTERM never cuts the write half-way
    def on_trial_result(self, iteration, trials, trial, result, **info):
        name = str(trial)
        found = epoch_metrics(result)
        if name not in self.writers or found is None:
            return
        step, metrics = found
        if step <= self.steps[name]:  # the final scores repeat the last epoch's
            return
        from tensorboardX.summary import scalar

        writer = self.writers[name]
        for key, value in metrics.items():
            writer.write_event(_event(scalar(key, value), step))
        writer.flush()
        self.steps[name], self.last[name] = step, metrics

    @signals_deferred()
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    @signals_deferred()
    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial)

    def _end(self, trial) -> None:
        from tensorboardX.summary import hparams

        name = str(trial)
        if name not in self.writers:
            return
        if trial.last_result:
            self.on_trial_result(0, [], trial, trial.last_result)  # the last report reaches callbacks late
        if self.last[name]:
            params = {k: v for k, v in self.params_of(trial.config).items()
                      if isinstance(v, (str, bool, int, float))}
            for summary in hparams(params, self.last[name]):
                self.writers[name].write_event(_event(summary))
        self._close(name)

    def _close(self, name: str) -> None:
        writer = self.writers.pop(name, None)
        if writer is not None:
            writer.close()

    def close(self, interrupted: bool = False) -> None:
        """Flush and close every open writer."""
        for name in list(self.writers):
            self._close(name)


def _event(summary, step: int = 0):
    """A TensorBoard event holding ``summary`` at ``step``, stamped now."""
    import time

    from tensorboardX.proto.event_pb2 import Event

    return Event(wall_time=time.time(), step=step, summary=summary)


class MLflowLogger(tune.Callback):
    """One MLflow run per trial whose status mirrors the trial's (module docstring).

    Args:
        target: the store and experiment.
        params_of: the trial's full resolved configuration from its Tune config (logged as params).
        outcome_of: the trial's outcome from its last report (``complete``, ``stopped``, ``failed``
            and why).
        tags_of: extra tags of a trial's run from its Tune config (e.g. the search's trial origin).
    """

    def __init__(self, target: MLflowTarget, params_of: Callable[[dict], dict], outcome_of: Outcome,
                 tags_of: Callable[[dict], dict] | None = None):
        self.target, self.params_of, self.outcome_of = target, params_of, outcome_of
        self.tags_of = tags_of or (lambda config: {})
        self.client = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}  # trial name -> run id, for runs this process set RUNNING
        self.steps: dict[str, int] = {}

    @signals_deferred()  # a Ctrl-C or SIGTERM never cuts an MLflow write half-way (the store stays locked)
    def setup(self, **info):
        from mlflow.entities import ViewType

        self.client = _client(self.target.uri)
        found = self.client.get_experiment_by_name(self.target.experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            check_mlflow(self.target)  # raises, naming the fix
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.target.experiment)
        # RUNNING runs of this experiment belong to a process that was killed (one command per folder)
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=10000):
            self.client.set_tag(run.info.run_id, "killed", "its process ended without closing it (found by a resume)")
            self.client.set_terminated(run.info.run_id, "KILLED")

    @signals_deferred()
    def on_trial_start(self, iteration, trials, trial, **info):
        name = str(trial)
        existing = self.client.search_runs([self.experiment_id], f"tags.`{TRIAL_TAG}` = '{name}'", max_results=1)
        if existing:
            run_id = existing[0].info.run_id
            attempt = int(existing[0].data.tags.get("attempts", "1")) + 1
            self.client.update_run(run_id, status="RUNNING")
            for tag in ("error", "pruned", "killed"):  # the earlier attempt's outcome
                if tag in existing[0].data.tags:
                    self.client.delete_tag(run_id, tag)
            for key, value in {"attempts": str(attempt), **self.tags_of(trial.config)}.items():
                self.client.set_tag(run_id, key, value)
        else:
            run = self.client.create_run(self.experiment_id, run_name=name,
                                         tags={TRIAL_TAG: name, "attempts": "1", **self.tags_of(trial.config)})
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in sorted(self.params_of(trial.config).items())]
            for i in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(run_id, params=params[i:i + 100])
        self.runs[name], self.steps[name] = run_id, -1

    on_trial_restore = on_trial_start

    @signals_deferred()
    def on_trial_result(self, iteration, trials, trial, result, **info):
        import time

        from mlflow.entities import Metric

        name = str(trial)
        found = epoch_metrics(result)
        if name not in self.runs or found is None or found[0] <= self.steps[name]:
            return
        step, metrics = found
        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[name], metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        self.steps[name] = step

    @signals_deferred()
    def on_trial_complete(self, iteration, trials, trial, **info):
        name = str(trial)
        if name not in self.runs:
            return
        self.on_trial_result(0, [], trial, trial.last_result or {})
        status, error = self.outcome_of(trial.last_result or {})
        if status == "failed":
            self._end(name, "FAILED", error=error or "failed")
        else:
            self._end(name, "FINISHED", pruned="true" if status == "stopped" else None)

    @signals_deferred()
    def on_trial_error(self, iteration, trials, trial, **info):
        from anchoropt.raytools import trial_error_message

        if str(trial) in self.runs:
            self._end(str(trial), "FAILED", error=trial_error_message(trial))

    def _end(self, name: str, status: str, **tags: str | None) -> None:
        run_id = self.runs.pop(name)
        for key, value in tags.items():
            if value is not None:
                self.client.set_tag(run_id, key, value[:5000])
        self.client.set_terminated(run_id, status)

    @signals_deferred()
    def close(self, interrupted: bool = False) -> None:
        """End every run still open as KILLED (the command was interrupted, or the trial never ended)."""
        for name in list(self.runs):
            self._end(name, "KILLED", killed="interrupted" if interrupted else "the trial did not end")


def tracking_callbacks(folder: str | Path, mlflow: MLflowTarget | None, params_of: Callable[[dict], dict],
                       outcome_of: Outcome, tags_of: Callable[[dict], dict] | None = None) -> list:
    """The tracking callbacks of one Tune run: TensorBoard under ``folder/tensorboard``, and MLflow
    when ``mlflow`` names a target (checked with :func:`check_mlflow` before Ray started)."""
    callbacks: list = [TensorBoardLogger(Path(folder) / "tensorboard", params_of)]
    if mlflow is not None:
        callbacks.append(MLflowLogger(mlflow, params_of, outcome_of, tags_of))
    return callbacks


@contextmanager
def closing_trackers(callbacks: list) -> Iterator[None]:
    """Inside, ``Tuner.fit``; on the way out the trackers are flushed and closed and MLflow runs still
    open ended as KILLED, tagged ``killed=interrupted`` when Ctrl-C or SIGTERM stopped the command
    (:func:`anchoropt.errors.interrupt_of`: also when another error raised on the way out hides it).

    The one place that closes them: Ray Tune also calls ``on_experiment_end`` when ``fit`` unwinds
    with an error (its clean-up), where the interruption behind that error cannot be told.
    """
    trackers = [cb for cb in callbacks if isinstance(cb, (TensorBoardLogger, MLflowLogger))]
    try:
        yield
    except BaseException as err:
        interrupted = interrupt_of(err) is not None
        for cb in trackers:
            try:
                cb.close(interrupted=interrupted)
            except Exception:  # noqa: BLE001  (the error on its way out is what the user must see)
                pass
        raise
    for cb in trackers:
        cb.close()


def trial_namer(name_of_config: Callable[[dict], str]) -> Callable:
    """Tune's ``trial_name_creator`` from a function of the trial's config (names Ray's trial
    folder, the TensorBoard run and the MLflow run alike)."""
    def name(trial) -> str:
        return name_of_config(trial.config)
    return name
