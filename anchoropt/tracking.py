"""Experiment trackers of a search or benchmark, as Ray Tune logger callbacks (run in the driver).

- TensorBoard, always: every reported result of every trial (per epoch: ``hm``, ``acc_base``,
  ``acc_novel``, ``loss``, ...; tags ``ray/tune/<key>``, step = epoch) goes to
  ``FOLDER/tensorboard/<trial name>/`` of the search or benchmark folder, with the trial's
  parameters as TensorBoard hparams at its end: ``tensorboard --logdir FOLDER/tensorboard``.
- MLflow, when a tracking URI is given (``--mlflow URI``): one MLflow run per trial (named as the
  trial), its parameters and every reported result as metrics, through Ray's
  ``MLflowLoggerCallback``. A local store: ``sqlite:///mlflow.db`` (MLflow 3 refuses the
  ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``).

Trial names come from :func:`trial_namer` (Tune's ``trial_name_creator``): ``trial-0003`` for the
fourth trial of a search, ``<method>.<dataset>.seed<k>`` for a benchmark cell.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ray.tune.logger import TBXLoggerCallback


class TensorBoardLogger(TBXLoggerCallback):
    """Ray Tune's TensorBoardX logger, writing under ``root/<trial name>`` instead of Ray's trial folder."""

    def __init__(self, root: str | Path):
        super().__init__()
        self.root = Path(root)

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        self._trial_writer[trial] = self._summary_writer_cls(str(self.root / str(trial)), flush_secs=30)
        self._trial_result[trial] = {}


def tracking_callbacks(folder: str | Path, mlflow_uri: str | None = None, experiment: str | None = None) -> list:
    """The logger callbacks of one Tune run: TensorBoard under ``folder/tensorboard``, and MLflow
    (experiment ``experiment``, default the folder's name) when ``mlflow_uri`` is given."""
    folder = Path(folder)
    callbacks = [TensorBoardLogger(folder / "tensorboard")]
    if mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=experiment or folder.name,
                                              tags={"anchoropt_folder": str(folder.resolve())}))
    return callbacks


def trial_namer(name_of_config: Callable[[dict], str]) -> Callable:
    """Tune's ``trial_name_creator`` from a function of the trial's config (names Ray's trial
    folder, the TensorBoard run and the MLflow run alike)."""
    def name(trial) -> str:
        return name_of_config(trial.config)
    return name
