"""The trial side of a search: what runs in a Ray worker, and how Optuna's draw reaches it."""
from __future__ import annotations

import time
from typing import Any, Callable

from anchoropt.config import make_config
from anchoropt.search.space import SearchSpace

METRIC = "hm"
NUMBER_KEY = "_optuna_trial"  # config key carrying the Optuna trial number into the trial


def run_trial(config: dict, base: dict, worker_setup: Callable[[], None] | None = None) -> None:
    """One AnchorOPT training run, reported every epoch (run by :func:`anchoropt.raytools.trainable`).

    ``config`` holds the drawn parameters (keys starting with ``_`` are the search's own);
    each report carries ``hm``, ``acc_base``, ``acc_novel`` (percent), ``epoch``, ``loss``,
    ``train_s`` (seconds since the trial started) and ``report_s`` (seconds inside ``tune.report``).
    """
    from ray import tune

    import anchoropt.train as training

    if worker_setup is not None:
        worker_setup()
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


class SpaceFn:
    """Picklable define-by-run function: the space's values plus the Optuna trial number."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        values = self.space.define_by_run(trial)
        values[NUMBER_KEY] = trial.number
        return values
