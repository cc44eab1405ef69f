"""The trial side of a search: what runs in a Ray worker, and how Optuna's draw reaches it and its
outcome returns (:class:`StudySearcher`, Optuna's public ask/tell interface)."""
from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any, Callable

from ray.tune.search import Searcher

from anchoropt.config import make_config
from anchoropt.errors import brief
from anchoropt.search.space import SearchSpace

METRIC = "hm"
NUMBER_KEY = "_optuna_trial"  # config key carrying the Optuna trial number into the trial
ORIGIN_KEY = "_origin"  # config key: who chose the parameters (enqueued, sampler start-up, sampler)
RUN_KEY = "_run"  # config key: the trial a retry re-runs (itself if none), naming its TensorBoard and MLflow run
SEARCH_KEY = "_search"  # config key: which search of a shared Tune run the trial belongs to (its index)


def outcome(result: dict | None, error: bool) -> tuple[str, str | None]:
    """A finished trial's status (``complete``, ``stopped`` early by the scheduler, ``failed``) and,
    when it failed without an exception of its own, why. ``result`` is the trial's last report."""
    if error:
        return "failed", None
    if not result or METRIC not in result:
        keys = ", ".join(sorted(k for k in (result or {}) if k in REPORTED)) or "nothing"
        return "failed", f"the trial's last report has no '{METRIC}' (it reported {keys})"
    value = result[METRIC]
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "failed", f"non-finite {METRIC} {brief(value)} at epoch {result.get('epoch')}"
    if result.get("epoch", 0) < result.get("epochs", 0):
        return "stopped", None
    return "complete", None


def trial_config(base: dict, config: dict) -> dict:
    """A trial's full configuration: the base updated by the drawn parameters (``config``'s keys
    starting with ``_`` are the search's own)."""
    return {**base, **{k: v for k, v in config.items() if not k.startswith("_")}}


REPORTED = ("hm", "acc_base", "acc_novel", "epoch", "epochs", "loss", "train_s", "report_s")
# what a report says of the objective's noise (anchoropt.metrics.pool_scores): images scored, HM's
# standard error, and which images were right (for the paired test of two trials on the same images)
NOISE = ("hm_se", "n_base", "n_novel", "correct_base", "correct_novel")


def run_trial(config: dict, bases: list[dict], worker_setup: Callable[[], None] | None = None,
              report_in_thread: bool = False) -> None:
    """One AnchorOPT training run, reported every epoch (run by :func:`anchoropt.raytools.trainable`).

    ``config`` holds the drawn parameters (keys starting with ``_`` are the search's own); they
    update ``bases[config[SEARCH_KEY]]``, the base configuration of the trial's search;
    each report carries ``hm``, ``acc_base``, ``acc_novel`` (percent), ``epoch`` (1-based),
    ``epochs`` (planned), ``loss``, ``train_s`` (seconds since the trial started),
    ``report_s`` (seconds the training waited on ``tune.report`` so far) and the objective's
    noise (:data:`NOISE`: ``hm_se`` in points, images scored, per-image right/wrong).

    ``tune.report`` returns only once the driver has processed the previous result and asked for
    the next one, a round trip per epoch. With ``report_in_thread`` (a search without a scheduler,
    which never stops a trial on a report) a :class:`Reports` thread makes them, in order, while
    training goes on; the trial ends once every report is delivered.

    Raises:
        ValueError: the trainer's metrics lack ``hm``, ``acc_base`` or ``acc_novel`` (naming the key).
    """
    from ray import tune

    import anchoropt.train as training

    if worker_setup is not None:
        worker_setup()
    cfg = make_config(trial_config(bases[config[SEARCH_KEY]], config), source="search trial")
    start = time.time()  # in-trial time (train_s): features, Stage I, Stage II, evaluations
    reported: list[dict] = []
    in_report = [0.0]  # seconds the training waited on ray.tune.report (Ray's share of the in-trial time)
    reports = Reports(tune.report) if report_in_thread else None

    def metrics_of(m: dict, epoch: int, loss: float) -> dict:
        missing = [k for k in ("hm", "acc_base", "acc_novel") if k not in m]
        if missing:
            raise ValueError(f"the trainer's epoch-{epoch} metrics have no '{missing[0]}' "
                             f"(they hold {', '.join(sorted(m)) or 'nothing'})")
        return {"hm": m["hm"], "acc_base": m["acc_base"], "acc_novel": m["acc_novel"], "epoch": epoch,
                "epochs": cfg.epochs, "loss": loss, "train_s": time.time() - start, "report_s": in_report[0],
                **{k: m[k] for k in NOISE if k in m}}

    def report(m: dict) -> None:
        now = time.time()
        metrics = metrics_of(m, m.get("epoch", len(reported) + 1), m.get("loss", float("nan")))
        reported.append(metrics)
        (reports.put if reports else tune.report)(metrics)
        in_report[0] += time.time() - now

    try:
        record = training.train(cfg, report=report)
    except BaseException:
        if reports:
            reports.close(raise_error=False)
        raise
    if reports:
        reports.close()
    if not reported:  # no epochs (e.g. epochs=0): report the final evaluation once
        tune.report(metrics_of(record["metrics"], cfg.epochs, float("nan")))


class Reports:
    """Calls ``send(metrics)`` for each :meth:`put`, in order, in a thread of its own, so that the
    caller does not wait for ``send`` to return.

    An exception ``send`` raised is raised again by the next :meth:`put` or by :meth:`close`
    (``SystemExit``, Tune's way of stopping a trial from inside ``tune.report``, by :meth:`put`
    only: training stops at its next report, as it would inside ``tune.report``).
    """

    def __init__(self, send: Callable[[dict], None]):
        self.send, self.error = send, None
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="tune-reports", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (metrics := self.queue.get()) is not None:
            try:
                self.send(metrics)
            except BaseException as err:  # noqa: BLE001  (raised again in the training thread)
                self.error = err
                return

    def put(self, metrics: dict) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(metrics)

    def close(self, raise_error: bool = True) -> None:
        """Wait until every report is sent; then raise what ``send`` raised, if anything."""
        self.queue.put(None)
        self.thread.join()
        if raise_error and self.error is not None and not isinstance(self.error, SystemExit):
            raise self.error


class StudySearcher(Searcher):
    """Ray Tune searcher over an Optuna study, through Optuna's public ask/tell interface.

    With ``sampler_at`` (position -> sampler), each draw gets a sampler seeded for its position in
    the search (:meth:`position`), so that the trials drawn do not depend on how many runs (resumes)
    the search took. Each trial's per-epoch ``hm`` is reported to Optuna as an intermediate value (step = epoch);
    a trial is told COMPLETE with its final ``hm``, PRUNED when the scheduler stopped it early
    (Optuna then keeps its last intermediate value), and FAIL when it raised, reported no ``hm``
    or a non-finite one (so it can never be the study's best).
    """

    def __init__(self, study, space: SearchSpace, n_startup_trials: int = 0,
                 sampler_at: Callable[[int], Any] | None = None):
        super().__init__(metric=METRIC, mode="max")
        self.study, self.space, self.n_startup_trials = study, space, n_startup_trials
        self.sampler_at = sampler_at
        self.trials: dict[str, Any] = {}
        self.last_step: dict[str, int] = {}
        self.grid_used_up = False

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        from optuna.trial import TrialState

        if self.grid_used_up:
            return Searcher.FINISHED
        done = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if self.sampler_at is not None:
            self.study.sampler = self.sampler_at(self.position())
        trial = self.study.ask()
        values = self.space.define_by_run(trial)
        self.trials[trial_id] = trial
        attrs = trial.user_attrs
        if "origin" in attrs:
            origin = attrs["origin"]
        elif "retry_of" in attrs:
            origin = f"retry of trial {attrs['retry_of']}"
        elif done < self.n_startup_trials:
            origin = f"{self.study.sampler.__class__.__name__} random start-up"
        else:
            origin = self.study.sampler.__class__.__name__
        return {**values, NUMBER_KEY: trial.number, ORIGIN_KEY: origin, RUN_KEY: self.first_attempt(trial.number)}

    def position(self) -> int:
        """Where the next draw stands in the search's stream: the trials asked so far, a trial that was
        re-run (interrupted, or lost with its node) counted once, through its retry."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        retried = {int(t.user_attrs["retry_of"]) for t in trials if "retry_of" in t.user_attrs}
        return sum(1 for t in trials if t.state != TrialState.WAITING and t.number not in retried)

    def first_attempt(self, number: int) -> int:
        """The trial that a retry (of a retry ...) of an interrupted or lost trial re-runs."""
        trials = self.study.get_trials(deepcopy=False)
        while number < len(trials) and "retry_of" in trials[number].user_attrs:
            number = int(trials[number].user_attrs["retry_of"])
        return number

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        trial = self.trials.get(trial_id)
        if trial is None:
            return
        status, _ = outcome(result, error)
        if status != "failed":
            self._report(trial_id, result)  # the last epoch (Tune does not pass it to on_trial_result)
        state = {"complete": TrialState.COMPLETE, "stopped": TrialState.PRUNED}.get(status, TrialState.FAIL)
        try:
            self.study.tell(trial, result[METRIC] if status == "complete" else None, state=state)
        except RuntimeError as err:
            # BruteForceSampler.after_trial calls Study.stop() once its grid is used up, which raises outside
            # Study.optimize; tell has stored the trial already (in a finally)
            if "Study.stop" not in str(err):
                raise
            self.grid_used_up = True
        self.trials.pop(trial_id)
        self.last_step.pop(trial_id, None)

    def _report(self, trial_id: str, result: dict | None) -> None:
        trial = self.trials.get(trial_id)
        value, step = (result or {}).get(METRIC), (result or {}).get("epoch")
        if trial is None or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                not isinstance(step, int) or step <= self.last_step.get(trial_id, -1):
            return
        trial.report(float(value), step)
        self.last_step[trial_id] = step

    def save(self, checkpoint_path: str) -> None:
        """Nothing: the study and the ledger are the search's state (a resume never restores Tune's)."""
