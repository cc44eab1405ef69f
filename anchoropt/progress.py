"""What a search or benchmark shows while it runs: one tqdm bar per Ray Tune run, Ray kept quiet.

By default a Tune run shows one bar (trials done of the total, failed ones, best so far, elapsed,
ETA) and nothing of Ray's own: no trial tables, no start-up or token-auth banner, no path of a
temporary folder, and no ``Tuner.restore`` hint (this tool resumes by running the same command,
or ``anchoropt search --resume DIR``). ``verbose >= 1`` (``--verbose``) shows Ray's output instead.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Callable, Iterator

from ray import tune
from tqdm.auto import tqdm

BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} |{bar:20}| [{elapsed}<{remaining}]{postfix}"
# Quiet levels of the loggers that speak during a Tune run: "ray" keeps its errors; ray.tune logs a
# failed trial's traceback and the Tuner.restore hint, authentication_token_setup the token-auth
# banner of a local start, mlflow its store set-up
QUIET_LEVELS = {"ray": logging.ERROR, "ray.tune": logging.CRITICAL, "ray.train": logging.CRITICAL,
                "ray.air": logging.CRITICAL, "ray.data": logging.CRITICAL,
                "ray._private.authentication.authentication_token_setup": logging.CRITICAL,
                "mlflow": logging.WARNING, "alembic": logging.WARNING}


class TrialProgress(tune.Callback):
    """A Tune callback (in the driver) drawing one bar for a run of ``total`` trials.

    Args:
        desc: the bar's label, e.g. ``search two_stage`` or ``benchmark toy11``.
        total: trials of the whole search or benchmark; ``done`` of them finished before this run
            (a resume), ``best`` the best ``metric`` among those.
        metric: result key shown as best so far (maximised), e.g. ``hm`` (percent).
        label: names a trial in the one line written when it fails (default: Ray's trial name).
        error_key: a result key whose presence marks a trial that ended normally as failed (a
            benchmark cell reports its own fault so, rather than failing the Ray trial).
        counts: whether a finished trial's last result may be best (a search: completed trials
            only, never one a scheduler stopped early); default every one.
    """

    def __init__(self, desc: str, total: int, *, done: int = 0, best: float | None = None, metric: str | None = "hm",
                 unit: str = "trials", label: Callable[[object], str] | None = None, error_key: str | None = None,
                 counts: Callable[[dict], bool] | None = None):
        self.desc, self.total, self.done, self.best, self.metric, self.unit = desc, total, done, best, metric, unit
        self.label, self.error_key, self.counts = label or str, error_key, counts
        self.failed = 0
        self.bar: tqdm | None = None

    def _bar(self) -> tqdm:
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit=self.unit,
                            bar_format=BAR_FORMAT, dynamic_ncols=True)
            self._postfix()
        return self.bar

    def _postfix(self) -> None:
        parts = []
        if self.best is not None:
            parts.append(f"best {self.metric.upper() if len(self.metric) <= 3 else self.metric} {self.best:.2f}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        self.bar.set_postfix_str(", ".join(parts), refresh=True)

    def setup(self, **info):
        self._bar()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._bar().refresh()  # a long trial reports every epoch: keep elapsed and ETA moving

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.error_key and self.error_key in (trial.last_result or {}):
            self.on_trial_error(iteration, trials, trial)
            return
        last = trial.last_result or {}
        value = last.get(self.metric) if self.metric and (self.counts is None or self.counts(last)) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.best = value if self.best is None else max(self.best, value)
        self._bar().update(1)
        self._postfix()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        bar = self._bar()
        bar.write(f"{self.desc}: {self.label(trial)} failed")
        bar.update(1)
        self._postfix()

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def ray_output(verbose: int) -> Iterator[None]:
    """Inside: Ray's loggers show errors only (``verbose`` 0) or as Ray sets them (``verbose`` >= 1).

    Trial failures stay visible: :class:`TrialProgress` writes one line each, and the search
    ledger and benchmark summary name their errors.
    """
    if verbose:
        yield
        return
    saved = {name: logging.getLogger(name).level for name in QUIET_LEVELS}
    saved_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    # Ray's new output engine prints its experiment table and folder paths even at verbose=0
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if saved_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved_env
