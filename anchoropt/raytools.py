"""Starting or joining Ray, shared by search and benchmark."""
from __future__ import annotations

import logging
import os

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None, verbose: int = 0) -> None:
    """Join the cluster at ``address`` (e.g. ``auto``), else start a local Ray once per process.

    Usage statistics are off; the dashboard is not started locally. ``ANCHOROPT_MODEL_CONFIGS``
    (extra open_clip model-config folders) is passed on to the workers. Ray's own log lines
    ("Started a local Ray instance", ...) show only with ``verbose`` >= 1.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.ERROR
    env = {k: os.environ[k] for k in ("RAY_USAGE_STATS_ENABLED", "ANCHOROPT_MODEL_CONFIGS") if k in os.environ}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False, logging_level=level)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False,
                 logging_level=level)
