"""What a search was asked to do: :class:`SearchSpec`, stored as the folder's ``search.json``.

A spec is validated once, when the search is created (:func:`new_spec`), before Ray starts; a
resume reads it back (:meth:`SearchSpec.read`) so that it depends on nothing but the folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anchoropt.config import ConfigError, TrainConfig, make_config
from anchoropt.search.space import SearchSpace, SpaceError, load_space, parse_space
from anchoropt.yamlio import read_yaml

OBJECTIVES = ("val", "test")
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "bruteforce")
SCHEDULERS = ("none", "asha")
VERSION = 1


class SearchError(ConfigError):
    """A search that cannot start or resume (bad folder, options, or space)."""


@dataclass
class SearchSpec:
    """One search's request (``search.json``) plus one entry per run in ``runs``.

    ``base`` is the full TrainConfig (as a dict, paths absolute) the drawn parameters update;
    ``max_epochs`` is the most Stage II epochs a trial can run (ASHA's ``max_t``).
    """

    space: dict
    space_source: str
    base: dict[str, Any]
    num_trials: int
    objective: str
    sampler: str
    seed: int
    scheduler: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    storage: str | None
    study_name: str
    max_epochs: int
    created: str
    version: int = VERSION
    runs: list[dict] = field(default_factory=list)

    @property
    def search_space(self) -> SearchSpace:
        return parse_space(self.space, source=self.space_source)

    def sampler_seed(self, run_index: int) -> int:
        """Each run (first and each resume) draws from its own seeded stream."""
        return self.seed + 1000 * run_index

    @classmethod
    def read(cls, out_dir: Path) -> SearchSpec:
        """The spec of a search folder. Raises SearchError when ``out_dir`` holds no search."""
        path = Path(out_dir) / "search.json"
        if not path.is_file():
            raise SearchError(f"{out_dir} is not a search folder (no search.json)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SearchError(f"{path}: not valid JSON ({err})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def write(self, out_dir: Path) -> None:
        from anchoropt.io import save_json
        save_json(dataclasses.asdict(self), Path(out_dir) / "search.json")


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


def read_space(space) -> tuple[SearchSpace, dict, str]:
    """A space given as a YAML path or a mapping: (parsed, raw mapping, source name)."""
    if isinstance(space, SearchSpace):
        raise SearchError("pass the space as a YAML path or mapping, so that it can be stored with the search")
    if isinstance(space, dict):
        return parse_space(space, "<space>"), space, "<space>"
    path = Path(space).expanduser()
    obj = load_space(path)
    return obj, read_yaml(path, mapping=False), str(path.resolve())


def new_spec(space, out_dir: Path, num_trials: int, base: TrainConfig | dict | None, *, objective: str,
             sampler: str, seed: int, scheduler: str, cpus_per_trial: float, gpus_per_trial: float,
             max_concurrent: int | None, storage: str | None) -> SearchSpec:
    """Validate a new search's request (no Ray, no files written).

    Raises:
        SearchError / SpaceError / ConfigError / DataError: the first bad option, space value,
            base key or dataset, in one line.
    """
    space_obj, space_raw, space_source = read_space(space)
    if objective not in OBJECTIVES:
        raise SearchError(f"unknown objective '{objective}' (expected val or test)")
    if scheduler not in SCHEDULERS:
        raise SearchError(f"unknown scheduler '{scheduler}' (expected none or asha)")
    make_sampler(sampler, 0)
    if not isinstance(num_trials, int) or num_trials < 1:
        raise SearchError(f"the number of trials must be >= 1, got {num_trials!r}")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise SearchError("cpus per trial must be > 0 and gpus per trial >= 0")
    if max_concurrent is not None and max_concurrent < 1:
        raise SearchError("max concurrent trials must be >= 1")
    values = base.to_dict() if isinstance(base, TrainConfig) else dict(base or {})
    if values.get("protocol", "base2novel") != "base2novel":
        raise SearchError(f"search scores HM under protocol=base2novel, got protocol={values['protocol']}; "
                          "tune on the source dataset, then benchmark the best config cross-dataset")
    values["eval_split"] = objective
    cfg = make_config(values, source="base config")  # path keys absolute: trials run in Ray workers elsewhere
    methods = space_obj.get("method").values() if space_obj.get("method") else [cfg.method]
    if "zeroshot" in methods:
        raise SpaceError(f"{space_obj.source}: method: zero-shot has no training epochs to search; "
                         f"search method coop or anchoropt")
    _check_space_against_base(space_obj, cfg)
    if Path(cfg.data_root).is_dir():  # fail fast here rather than in every trial (DataError names the cause)
        from anchoropt.data import build_dataset
        build_dataset(cfg.data_root, cfg.dataset)
    if storage:
        if "://" not in storage:
            raise SearchError(f"storage must be an RDB URL such as sqlite:///path.db, got {storage!r}")
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////") and ":memory:" not in storage:
            # absolute, so that a resume from another folder finds it
            storage = "sqlite:///" + str(Path(storage[len("sqlite:///"):]).expanduser().resolve())
    digest = hashlib.sha1(str(out_dir).encode()).hexdigest()[:8]
    return SearchSpec(space=space_raw, space_source=space_source, base=cfg.to_dict(), num_trials=num_trials,
                      objective=objective, sampler=sampler, seed=seed, scheduler=scheduler,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                      storage=storage, study_name=f"anchoropt-{out_dir.name}-{digest}",
                      max_epochs=space_obj.max_value("epochs", cfg.epochs), created=now())


def _check_space_against_base(space: SearchSpace, cfg: TrainConfig) -> None:
    """Every value the space can give must make a valid configuration with the base."""
    for p in space.params:
        for value in p.values():
            try:
                make_config({**cfg.to_dict(), p.name: value}, source="space")
            except ConfigError as err:
                raise SpaceError(f"{space.source}: {p.name}: value {value!r} is invalid: {err}") from None


def now() -> str:
    """UTC time stamp, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def request_change(stored: SearchSpec, requested: SearchSpec) -> str | None:
    """How a new request for a search folder differs from the search stored there, in one phrase
    (``space``, ``objective``, base keys ``epochs 5 -> 7``, ...), or None when it asks the same
    search (its number of trials aside; where a trial runs, ``cache_dir``/``device``, aside too)."""
    changes = [f"{key} {getattr(stored, key)!r} -> {getattr(requested, key)!r}"
               for key in ("objective", "sampler", "seed", "scheduler") if getattr(stored, key) != getattr(requested, key)]
    if stored.space != requested.space:
        changes.append(f"space {stored.space_source} -> {requested.space_source} (other parameters or ranges)")
    changes += [f"{key} {stored.base.get(key)!r} -> {value!r}" for key, value in requested.base.items()
                if key not in ("cache_dir", "device") and stored.base.get(key) != value]
    return ", ".join(changes) or None
