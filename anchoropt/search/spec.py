"""What a search was asked to do: :class:`SearchSpec`, stored as the folder's ``search.json``.

A spec is validated once, when the search is created (:func:`new_spec`), before Ray starts; a
resume reads it back (:meth:`SearchSpec.read`) so that it depends on nothing but the folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anchoropt.config import MAX_SEED, ConfigError, TrainConfig, make_config
from anchoropt.errors import brief
from anchoropt.paths import default_file, shipped_note
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
    sampler_options: dict[str, Any] = field(default_factory=dict)  # e.g. TPE's n_startup_trials
    grid_size: int | None = None  # bruteforce: points of the space's grid
    enqueued: list[dict] = field(default_factory=list)  # {"origin", "params"}: run before any draw
    notes: list[str] = field(default_factory=list)  # what the search changed or could not do, in words
    mlflow: dict | None = None  # {"uri", "experiment"} (anchoropt.tracking.MLflowTarget): a resume keeps logging
    version: int = VERSION
    runs: list[dict] = field(default_factory=list)

    @property
    def search_space(self) -> SearchSpace:
        return parse_space(self.space, source=self.space_source)

    def draw_seed(self, position: int) -> int:
        """Seed of the sampler that draws the search's ``position``-th trial (0-based; a trial re-run
        after an interruption or a lost node keeps its position). It depends on the search's seed and
        the position alone, so a resumed search continues the stream an uninterrupted one draws
        (NumPy ``SeedSequence``). QMC keeps the search's seed: its sequence is one stream that the
        study indexes itself."""
        import numpy as np

        if self.sampler == "qmc":
            return self.seed
        return int(np.random.SeedSequence([self.seed, position]).generate_state(1)[0])

    @property
    def reproducibility(self) -> str:
        """Whether the seed pins the search's result, in one sentence."""
        if self.max_concurrent == 1:
            return (f"seed {self.seed}, one trial at a time: a rerun, or a search interrupted and resumed, draws "
                    "the same trials in the same order (a trial cut short by the interruption runs again with its "
                    "parameters under a new trial number, as 'retry of trial N')")
        return (f"not reproducible from seed {self.seed}: with {self.max_concurrent or 'several'} trials at once, "
                f"the order in which trials finish (timing) changes what the sampler has seen before each draw "
                f"(and which trials a scheduler stops); only max_concurrent=1 reproduces a search")

    @property
    def sampler_description(self) -> str:
        """The sampler as it ran: ``tpe`` with its random start-up, stated against the budget."""
        k = self.sampler_options.get("n_startup_trials")
        if k is None:
            return self.sampler
        if k >= self.num_trials:
            return f"{self.sampler}: all {self.num_trials} trials random (start-up of {k} trials)"
        return f"{self.sampler}: first {k} of {self.num_trials} trials random start-up, then model-guided"

    @classmethod
    def read(cls, out_dir: Path) -> SearchSpec:
        """The spec of a search folder. Raises SearchError when ``out_dir`` holds no search, or its
        ``search.json`` is not valid JSON, lacks a field or holds a bad option (:func:`check_options`)."""
        path = Path(out_dir) / "search.json"
        if not path.is_file():
            raise SearchError(f"{out_dir} is not a search folder (no search.json)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SearchError(f"{path}: not valid JSON ({err})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict):
            raise SearchError(f"{path}: not a search's request (a JSON object)")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise SearchError(f"{path}: damaged, no {', '.join(missing)}")
        spec = cls(**{k: v for k, v in raw.items() if k in known})
        try:  # a damaged or edited file fails here, in one line, not after Ray started
            check_options(spec.objective, spec.scheduler, spec.sampler, spec.seed, spec.num_trials,
                          spec.cpus_per_trial, spec.gpus_per_trial, spec.max_concurrent)
        except SearchError as err:
            raise SearchError(f"{path}: {err}") from None
        return spec

    def write(self, out_dir: Path) -> None:
        """``search.json``: the fields, plus the sampler as it runs and the reproducibility caveat in words."""
        from anchoropt.io import save_json
        save_json({**dataclasses.asdict(self), "sampler_as_run": self.sampler_description,
                   "reproducibility": self.reproducibility}, Path(out_dir) / "search.json")


def startup_trials(num_trials: int) -> int:
    """Random start-up trials of a model-based sampler (TPE, GP) for a budget of ``num_trials``:
    Optuna's default 10, but at most a quarter of the budget (at least 1), so that a small budget
    still gets model-guided draws."""
    return min(10, max(1, num_trials // 4))


def make_sampler(name: str, seed: int, options: dict[str, Any] | None = None):
    """A seeded Optuna sampler by name; ``options`` are its keyword arguments (``n_startup_trials``)."""
    import optuna
    import optuna.samplers as s

    kw = dict(options or {})
    makers = {"tpe": lambda: s.TPESampler(seed=seed, **kw), "random": lambda: s.RandomSampler(seed=seed),
              "cmaes": lambda: s.CmaEsSampler(seed=seed, warn_independent_sampling=False),
              "qmc": lambda: s.QMCSampler(seed=seed, warn_independent_sampling=False),
              "gp": lambda: s.GPSampler(seed=seed, **kw), "bruteforce": lambda: s.BruteForceSampler(seed=seed)}
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
    path = default_file(space, "spaces")
    if not path.is_file():
        raise SearchError(f"search space file not found: {path} ({shipped_note('spaces')})")
    obj = load_space(path)
    return obj, read_yaml(path, mapping=False), str(path.resolve())


def check_options(objective: Any, scheduler: Any, sampler: Any, seed: Any, num_trials: Any, cpus_per_trial: Any,
                  gpus_per_trial: Any, max_concurrent: Any) -> None:
    """Check a search's options, given (:func:`new_spec`) or stored (:meth:`SearchSpec.read`).

    Raises:
        SearchError: the first bad one, in one line.
    """
    if objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {brief(objective)} (expected val or test)")
    if scheduler not in SCHEDULERS:
        raise SearchError(f"unknown scheduler {brief(scheduler)} (expected none or asha)")
    if sampler not in SAMPLERS:
        raise SearchError(f"unknown sampler {brief(sampler)} (expected one of {', '.join(SAMPLERS)})")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise SearchError(f"the sampler seed must be an integer in 0 .. {MAX_SEED}, got {brief(seed)}")
    if not isinstance(num_trials, int) or isinstance(num_trials, bool) or num_trials < 1:
        raise SearchError(f"the number of trials must be >= 1, got {brief(num_trials)}")
    resources = (cpus_per_trial, gpus_per_trial)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in resources) \
            or cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise SearchError(f"cpus per trial must be > 0 and gpus per trial >= 0, got {brief(resources)}")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise SearchError(f"max concurrent trials must be >= 1, got {brief(max_concurrent)}")


def new_spec(space, out_dir: Path, num_trials: int, base: TrainConfig | dict | None, *, objective: str,
             sampler: str, seed: int, scheduler: str, cpus_per_trial: float, gpus_per_trial: float,
             max_concurrent: int | None, storage: str | None, enqueue: list[str | Path] = ()) -> SearchSpec:
    """Validate a new search's request (no Ray, no files written).

    Raises:
        SearchError / SpaceError / ConfigError / DataError: the first bad option, space value,
            base key or dataset, in one line.
    """
    space_obj, space_raw, space_source = read_space(space)
    check_options(objective, scheduler, sampler, seed, num_trials, cpus_per_trial, gpus_per_trial, max_concurrent)
    values = base.to_dict() if isinstance(base, TrainConfig) else dict(base or {})
    if values.get("protocol", "base2novel") != "base2novel":
        raise SearchError(f"search scores HM under protocol=base2novel, got protocol={values['protocol']}; "
                          "tune on the source dataset, then benchmark the best config cross-dataset")
    values["eval_split"] = objective
    cfg = make_config(values, source="base config")  # path keys absolute: trials run in Ray workers elsewhere
    methods = space_obj.get("method").values() if space_obj.get("method") else [cfg.method]
    if "zeroshot" in methods:
        raise SpaceError(f"{space_obj.source}: method: zero-shot has no training epochs to search; "
                         f"search a method that trains (e.g. coop or anchoropt)")
    _check_space_against_base(space_obj, cfg)
    if Path(cfg.data_root).is_dir():  # fail fast here rather than in every trial (DataError names the cause)
        from anchoropt.data import build_dataset
        build_dataset(cfg.data_root, cfg.dataset)
    if storage:
        if "://" not in storage:
            raise SearchError(f"storage must be an RDB URL such as sqlite:///path.db, got {brief(storage)}")
        check_persistent(storage)
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////") and ":memory:" not in storage:
            # absolute, so that a resume from another folder finds it
            storage = "sqlite:///" + str(Path(storage[len("sqlite:///"):]).expanduser().resolve())
    notes, grid = [], None
    if sampler == "bruteforce":
        grid = grid_size(space_obj)
        if num_trials > grid:
            notes.append(f"bruteforce: the space's grid has {grid} points: {grid} trials instead of {num_trials}")
            num_trials = grid
    default, why = default_params(space_obj, cfg.to_dict(), on_grid=sampler == "bruteforce")
    enqueued = [] if default is None else [{"origin": "default config", "params": default}]
    if why:
        notes.append(why)
    for file in enqueue:
        enqueued += read_enqueue(file, space_obj, cfg.to_dict())
    digest = hashlib.sha1(str(out_dir).encode()).hexdigest()[:8]
    return SearchSpec(space=space_raw, space_source=space_source, base=cfg.to_dict(), num_trials=num_trials,
                      objective=objective, sampler=sampler, seed=seed, scheduler=scheduler,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                      storage=storage, study_name=f"anchoropt-{out_dir.name}-{digest}",
                      max_epochs=space_obj.max_value("epochs", cfg.epochs), created=now(),
                      sampler_options={"n_startup_trials": startup_trials(num_trials)} if sampler in ("tpe", "gp")
                      else {}, grid_size=grid, enqueued=enqueued, notes=notes)


def check_persistent(url: str) -> None:
    """Refuse an Optuna storage URL whose study dies with the process (a search must be resumable)."""
    if url.startswith("sqlite") and (":memory:" in url or "mode=memory" in url or url.rstrip("/") == "sqlite:"):
        raise SearchError(f"storage {url} keeps the study in memory only: a search must survive a kill to be "
                          f"resumed; give a file (sqlite:///path.db) or leave --storage out (a journal file)")


def grid_values(p) -> list | None:
    """Every value a parameter takes on a grid (bruteforce), or None for a continuous one."""
    if p.type in ("categorical", "fixed"):
        return p.values()
    if p.type == "int":
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    if p.step is None:
        return None
    n = int(math.floor((p.high - p.low) / p.step + 1e-9))
    return [p.low + i * p.step for i in range(n + 1)]


def grid_size(space: SearchSpace) -> int:
    """Points of a finite space (conditional parameters counted only where drawn).

    Raises:
        SearchError: a continuous parameter (float without ``step``), named with the space file.
    """
    for p in space.params:
        if grid_values(p) is None:
            raise SearchError(f"{space.source}: {p.name}: sampler bruteforce needs a finite grid, but {p.name} is "
                              f"a float from {p.low} to {p.high} without step (add step, or use choices)")
    referenced = {name for p in space.params for name in p.when}

    def count(i: int, drawn: dict) -> int:
        if i == len(space.params):
            return 1
        p = space.params[i]
        if not p.active(drawn):
            return count(i + 1, drawn)
        values = grid_values(p)
        if p.name in referenced:
            return sum(count(i + 1, {**drawn, p.name: v}) for v in values)
        return len(values) * count(i + 1, drawn)
    return count(0, {})


def _inside(p, value: Any, on_grid: bool = False) -> bool:
    if p.type == "fixed":
        return value == p.value
    if p.type == "categorical":
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:
        return False
    if p.type == "int" or p.step is not None:
        step = p.step or 1
        return abs((value - p.low) / step - round((value - p.low) / step)) < 1e-9
    return not on_grid


def default_params(space: SearchSpace, base: dict, on_grid: bool = False) -> tuple[dict | None, str | None]:
    """The base configuration's values of the space's parameters (the trial "no search" would run),
    or None and why, when one lies outside the space."""
    drawn: dict[str, Any] = {}
    for p in space.params:
        if not p.active(drawn):
            continue
        value = p.value if p.type == "fixed" else base[p.name]
        if not _inside(p, value, on_grid):
            return None, (f"the default config is not enqueued: its {p.name}={brief(value)} lies outside the space "
                          f"({space.source})")
        drawn[p.name] = value
    return drawn, None


def read_enqueue(path: str | Path, space: SearchSpace, base: dict) -> list[dict]:
    """Configurations to run before any draw: a YAML mapping of space parameters (or a list of
    them); parameters left out are drawn by the sampler.

    Raises:
        SearchError: file missing or not YAML, a key that is not a parameter of the space, a value
            outside it, or a conditional parameter whose ``when`` the entry does not meet (one line
            naming the file, entry and key).
    """
    path = Path(path).expanduser()
    try:
        raw = read_yaml(path, "enqueue file", mapping=False)
    except ConfigError as err:
        raise SearchError(str(err)) from None
    entries = raw if isinstance(raw, list) else [raw]
    out = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path} entry {i}" if isinstance(raw, list) else str(path)
        if not isinstance(entry, dict) or not entry:
            raise SearchError(f"{where}: expected a mapping of search-space parameters, got {brief(entry)}")
        params = {}
        for key, value in entry.items():
            p = space.get(key)
            if p is None:
                raise SearchError(f"{where}: {key} is not a parameter of the space {space.source} "
                                  f"(its parameters: {', '.join(space.names)})")
            try:
                value = getattr(make_config({**base, key: value}, source=where), key)  # typed as the field
            except ConfigError as err:
                raise SearchError(str(err)) from None
            if not _inside(p, value):
                raise SearchError(f"{where}: {key}={brief(value)} lies outside the space {space.source}")
            params[key] = value
        _check_conditions(params, space, where)
        out.append({"origin": f"enqueued from {path.name}" + (f" #{i}" if isinstance(raw, list) else ""),
                    "params": params})
    return out


def _check_conditions(params: dict, space: SearchSpace, where: str) -> None:
    """Every conditional parameter of an enqueued entry must be active under the entry's own values
    (a fixed parameter's value counts): otherwise Optuna would drop it without a word.

    Raises:
        SearchError: one line naming the entry, the parameter and its ``when`` condition.
    """
    known = {**{p.name: p.value for p in space.params if p.type == "fixed"}, **params}
    for key in params:
        for ref, values in space.get(key).when.items():
            shown = values[0] if len(values) == 1 else list(values)
            if ref not in known:
                raise SearchError(f"{where}: {key} is used only when {ref} is {shown}, and the entry does not set "
                                  f"{ref}: add {ref}: {shown} to the entry, or remove {key}")
            if known[ref] not in values:
                raise SearchError(f"{where}: {key} is used only when {ref} is {shown}, but the entry sets "
                                  f"{ref}: {known[ref]}: remove {key}, or set {ref}: {shown}")


def _check_space_against_base(space: SearchSpace, cfg: TrainConfig) -> None:
    """Every value the space can give must make a valid configuration with the base."""
    for p in space.params:
        for value in p.values():
            try:
                make_config({**cfg.to_dict(), p.name: value}, source="space")
            except ConfigError as err:
                raise SpaceError(f"{space.source}: {p.name}: value {brief(value)} is invalid: {err}") from None


def now() -> str:
    """UTC time stamp, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def request_change(stored: SearchSpec, requested: SearchSpec) -> str | None:
    """How a new request for a search folder differs from the search stored there, in one phrase
    (``space``, ``objective``, base keys ``epochs 5 -> 7``, ...), or None when it asks the same
    search (its number of trials aside; where a trial runs, ``cache_dir``/``device``, aside too)."""
    changes = [f"{key} {brief(getattr(stored, key))} -> {brief(getattr(requested, key))}"
               for key in ("objective", "sampler", "seed", "scheduler") if getattr(stored, key) != getattr(requested, key)]
    if stored.space != requested.space:
        changes.append(f"space {stored.space_source} -> {requested.space_source} (other parameters or ranges)")
    changes += [f"{key} {brief(stored.base.get(key))} -> {brief(value)}" for key, value in requested.base.items()
                if key not in ("cache_dir", "device") and stored.base.get(key) != value]
    return ", ".join(changes) or None
