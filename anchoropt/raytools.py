"""Ray, the one place: starting or joining a cluster, trial resources, and the trainable wrapper that
search and benchmark trials both run in."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ray

from anchoropt.errors import ConfigError, brief

CONNECT_TIMEOUT_S = 5.0  # a TCP connect to a live GCS takes milliseconds, even across a data centre


class RayConnectError(ConfigError):
    """The Ray cluster named by ``--address`` cannot be joined; the message names the address and the fix."""


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to ``host:port`` within ``timeout_s``.

    Ray itself retries an unreachable address for minutes; this fails in seconds.

    Raises:
        RayConnectError: not ``host:port``, or nothing answers there.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayConnectError(f"--address {brief(address)} is not host:port (e.g. 10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise RayConnectError(f"no Ray cluster reachable at {address} ({reason}): start one with "
                              f"`ray start --head --port={port}` on {host}, or pass the address `ray status` "
                              "prints there") from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None, verbose: int = 0) -> None:
    """Join the cluster at ``address`` (e.g. ``auto``), else start a local Ray once per process.

    Usage statistics are off (and Ray Tune's callback count, :func:`skip_callback_usage_tag`); the
    dashboard is not started locally. ``ANCHOROPT_MODEL_CONFIGS``
    (extra open_clip model-config folders) is passed on to the workers. Ray's own log lines
    ("Started a local Ray instance", ...) show only with ``verbose`` >= 1.

    Raises:
        RayConnectError: ``address`` is unreachable (within :data:`CONNECT_TIMEOUT_S`), or the
            cluster refuses this process (e.g. token authentication without the token).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ctrl-C must stop the driver (KeyboardInterrupt out of Tuner.fit), not end the Tune run
    # "gracefully" and return as if every trial had been run
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # no per-trial progress.csv / result.json of Tune's own: the ledger and TensorBoard hold every
    # result, and writing them is driver time a trial waits for at each per-epoch report
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    skip_callback_usage_tag()
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.ERROR
    env = {k: os.environ[k] for k in ("RAY_USAGE_STATS_ENABLED", "ANCHOROPT_MODEL_CONFIGS") if k in os.environ}
    if address and address != "auto" and not address.startswith("ray://"):
        check_reachable(address)
    try:
        with keep_sigterm_handler():
            if not address:
                ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                         log_to_driver=False, logging_level=level)
                return
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False, logging_level=level)
    except ConnectionError as err:
        if not address:
            raise
        cause = str(err.__cause__ or err)
        if "AuthToken" in cause or "Unauthenticated" in cause:
            fix = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                   "(or RAY_AUTH_TOKEN_PATH) to its token (`ray get-auth-token` on the head node)")
        elif address == "auto":
            fix = "no running cluster was found on this machine: start one with `ray start --head` or pass --address host:port"
        else:
            fix = "check that it is a Ray head node of the same Ray version"
        raise RayConnectError(f"cannot join the Ray cluster at {address}: {fix}") from None


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the process's SIGTERM handler with one that exits at once (status 1 or
    15); the handler set before (the command line's: stop like Ctrl-C, resumable) is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM that arrive inside wait until it ends, then act as usual: for a
    driver-side write that an exception raised half-way through would leave broken (an MLflow
    SQLite write cut inside SQLAlchemy keeps the store locked, so the run could not be ended as
    KILLED). Python runs signal handlers in the main thread whichever thread the kernel handed the
    signal to, so their handlers are swapped for one that notes the signal (a signal mask of the
    main thread alone let a signal through Ray's threads). Elsewhere than in the main thread, where
    no handler runs and none can be set, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    holding = True

    def hold(signum, frame):
        if holding:
            held.append(signum)
        else:  # arrived while the handlers were being put back: act on it now
            signal.signal(signum, before[signum])
            signal.raise_signal(signum)

    before = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        holding = False
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)


def skip_callback_usage_tag() -> None:
    """With usage statistics off, skip Ray Tune's count of callback classes at each ``Tuner.fit``.

    To count them, ``ray.air._internal.usage.tag_callbacks`` imports the MLflow, W&B and Comet
    integrations, and with them MLflow itself (1-2 s of a search's start on these machines),
    although the count is sent nowhere. A search given ``--mlflow`` still imports MLflow for its
    own logger.
    """
    if os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        return
    from ray.air._internal import usage

    usage.tag_callbacks = _no_usage_tag


def _no_usage_tag(callbacks) -> bool:
    return False


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: ``cpus`` (> 0) and ``gpus`` (>= 0; fractions share a GPU, 0.25: four
    trials per GPU). Raises ConfigError naming the bad value."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        if not self.cpus > 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus}")
        if not self.gpus >= 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, got {self.gpus}")

    @property
    def threads(self) -> int:
        """torch threads of the trial: one per reserved CPU (more oversubscribe the cores and slow
        small models many times)."""
        return max(1, round(self.cpus))

    def bundle(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def trainable(fn: Callable[..., Any], resources: Resources, **params: Any):
    """``fn(config, **params)`` as a Ray Tune function trainable reserving ``resources``; in the
    worker, torch runs with :attr:`Resources.threads` threads. ``params`` travel through Ray's object
    store (``tune.with_parameters``)."""
    from ray import tune

    threads = resources.threads

    def run(config: dict, **kwargs: Any) -> Any:
        import torch

        torch.set_num_threads(threads)
        return fn(config, **kwargs)

    run.__name__ = fn.__name__
    return tune.with_resources(tune.with_parameters(run, **params), resources.bundle())


def check_resources(resources: Resources) -> None:
    """A trial must fit on one node of the running Ray cluster, else Tune leaves it PENDING forever.

    Raises:
        ConfigError: one line: the request and the largest node's CPUs and GPUs.
    """
    cpus_per_trial, gpus_per_trial = resources.cpus, resources.gpus
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: above 1 a trial takes whole GPUs")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in nodes):
        return
    cpus, gpus = max((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes) if nodes else (0, 0)
    raise ConfigError(f"a trial asks for {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU, but the largest of the "
                      f"Ray cluster's {len(nodes)} node(s) has {cpus:g} CPU and {gpus:g} GPU: lower --cpus-per-trial "
                      f"/ --gpus-per-trial or join a larger cluster with --address")


def is_infrastructure_error(err: BaseException | None) -> bool:
    """Whether a trial's error is the cluster's fault (its actor, worker or node died, an object was
    lost), not its code's: such a trial is re-run, never recorded as failed. An exception raised by
    the trial's own code reaches the driver as ``RayTaskError`` and is not one."""
    from ray import exceptions as rex

    infra = (rex.RayActorError, rex.ActorUnavailableError, rex.NodeDiedError, rex.WorkerCrashedError,
             rex.LocalRayletDiedError, rex.ObjectLostError, rex.OwnerDiedError)
    return isinstance(err, infra) and not isinstance(err, rex.RayTaskError)


def trial_error_message(trial) -> str:
    """One line naming the exception of a failed trial (from its Ray error file)."""
    text = ""
    try:
        err = trial_error(trial)
        if err is not None:
            cause = getattr(err, "cause", None) or err
            text = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    except Exception:  # noqa: BLE001  (best effort: fall back to the text file)
        text = ""
    if not text and trial.error_file and Path(trial.error_file).is_file():
        lines = [ln.strip() for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    return text[:500] or "unknown error"


def trial_error(trial) -> BaseException | None:
    """The trial's exception: from its local error file (written before Tune's callbacks run; the
    copy in the storage folder may not be synced yet), else from storage."""
    import cloudpickle

    try:
        local = trial.pickled_error_file
        if local and Path(local).is_file():
            return cloudpickle.loads(Path(local).read_bytes())
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001  (an unreadable error file: treated as the trial's own fault)
        return None
