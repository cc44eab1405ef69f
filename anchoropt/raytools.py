"""Starting or joining Ray, shared by search and benchmark."""
from __future__ import annotations

import os

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (e.g. ``auto``), else start a local Ray once per process.

    Usage statistics are off; the dashboard is not started locally. ``ANCHOROPT_MODEL_CONFIGS``
    (extra open_clip model-config folders) is passed on to the workers.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("RAY_USAGE_STATS_ENABLED", "ANCHOROPT_MODEL_CONFIGS") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A trial must fit on one node of the running Ray cluster, else Tune leaves it PENDING forever.

    Raises:
        ConfigError: one line: the request and the largest node's CPUs and GPUs.
    """
    from anchoropt.config import ConfigError

    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: above 1 a trial takes whole GPUs")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in nodes):
        return
    cpus, gpus = max((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes) if nodes else (0, 0)
    raise ConfigError(f"a trial asks for {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU, but the largest of the "
                      f"Ray cluster's {len(nodes)} node(s) has {cpus:g} CPU and {gpus:g} GPU: lower --cpus-per-trial "
                      f"/ --gpus-per-trial or join a larger cluster with --address")
