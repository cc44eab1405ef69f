"""Benchmark suites (YAML, see ``benchmarks/``): parsing, and each method's configuration, the one place.

A suite names a protocol, datasets, seeds, a shared ``config`` of TrainConfig keys,
``per_dataset`` overrides (what every method shares per dataset, e.g. AnchorOPT's Stage I) and
named ``methods``; a method is TrainConfig keys, its own ``per_dataset: {dataset: {keys}}`` (its
reference settings per dataset, e.g. MaPLe+AnchorOPT's n_ctx and epochs) and/or
``config: <file>``, e.g. a search's ``best_config.yaml`` (``{dataset}`` in the path is replaced
per cell; a relative path is relative to the suite file). A method's values, later wins
(:func:`method_values`)::

    suite config < suite per_dataset[d] < method per_dataset[d] < method config file < method keys

so the suite file reproduces each method's reference exactly (the method's own per-dataset
values replace the shared ones; a key may not be both one of the method's keys and in its
per_dataset), and a search's best config replaces exactly the keys it searched.
``schedule_methods`` names the two methods compared in the one-stage vs two-stage section and
tuned by ``anchoropt run``; ``pairs`` maps a method to the base it is compared with in the
report's method-matrix section (paired tests, and the paper's averages table: each base, then
its methods in the order given)::

    schedule_methods: {one_stage: coop_anchoropt_one_stage, two_stage: coop_anchoropt_two_stage}
    pairs: {coop_atp: coop, coop_anchoropt: coop, maple_atp: maple, maple_anchoropt: maple}

Protocols (SPEC section 8): ``base2novel`` (a cell is method, dataset, seed) and
``cross_dataset`` (a cell is method, seed: train on ``source``, score it and each of ``datasets``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchoropt.config import MAX_SEED, PROTOCOLS, SCHEDULES, TrainConfig, check_keys, make_config
from anchoropt.errors import ConfigError, brief, names
from anchoropt.paths import absolute, check_name, default_file, relative_to_file, shipped_note
from anchoropt.yamlio import read_yaml

_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True}
_NAME = {"type": ["string", "null"], "minLength": 1}
#: dataset -> TrainConfig keys (a suite's and a method's ``per_dataset``)
_PER_DATASET = {"type": ["object", "null"], "additionalProperties": {"type": ["object", "null"]}}
#: JSON Schema of a suite file (types and counts of its values); TrainConfig keys are checked by make_config
SUITE_SCHEMA = {
    "type": "object", "required": ["datasets", "seeds", "methods"],
    "properties": {
        "name": {"type": "string", "minLength": 1}, "protocol": {"type": "string"}, "source": _NAME,
        "datasets": _NAMES, "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}, "minItems": 1,
                  "uniqueItems": True},
        "config": {"type": ["object", "null"]},
        "per_dataset": {**_PER_DATASET, "description": "dataset -> keys every method shares there"},
        "methods": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": ["object", "null"], "description": "TrainConfig keys, per_dataset, config, config_keys; a "
            "cell's values, later wins: suite config, suite per_dataset, method per_dataset, method config file, "
            "method keys (a key may not be both a method key and in its per_dataset)",
            "properties": {"per_dataset": {**_PER_DATASET, "description": "dataset -> this method's reference "
                                                                          "settings there"}}}},
        "baseline": _NAME, "schedule_methods": {"type": ["object", "null"]}, "search_dataset": _NAME,
        "pairs": {"type": ["object", "null"], "additionalProperties": {"type": "string", "minLength": 1},
                  "description": "method -> the base it is compared with (report's method-matrix section)"},
    },
}
SUITE_KEYS = set(SUITE_SCHEMA["properties"])
RENAMED_KEYS = {"schedules": "schedule_methods: {one_stage: <method>, two_stage: <method>}"}
#: keys of a method's config file that the cell sets itself (where, which seed, which split)
CELL_KEYS = ("dataset", "seed", "data_root", "cache_dir", "device", "eval_split",
             "objective")  # objective: eval_split in the best configs of version-1 searches


@dataclass(frozen=True)
class Suite:
    """A parsed suite file (frozen: derive a changed suite with ``dataclasses.replace``). ``methods`` maps
    a method name to its spec (TrainConfig keys, optionally ``config: <file>``)."""

    name: str
    path: Path
    datasets: list[str]  # under cross_dataset: the targets
    seeds: list[int]
    config: dict[str, Any]
    methods: dict[str, dict[str, Any]]  # name -> TrainConfig keys, per_dataset, config, config_keys
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str = "base2novel"
    source: str | None = None  # cross_dataset: the dataset trained on
    baseline: str | None = None
    schedule_methods: dict[str, str] | None = None  # schedule -> method name
    search_dataset: str | None = None  # where ``anchoropt run`` tunes the schedules
    pairs: dict[str, str] | None = None  # method -> the base it is compared with (report)

    @property
    def trained_datasets(self) -> list[str]:
        """The datasets a cell trains on (the source alone under cross_dataset)."""
        return [self.source] if self.protocol == "cross_dataset" else list(self.datasets)


def select(suite: Suite, datasets: list[str] | None = None, seeds: list[int] | None = None,
           methods: list[str] | None = None) -> Suite:
    """A copy of the suite restricted to some of its datasets (the targets under cross_dataset),
    seeds and methods (``None``: all); ``benchmark --datasets/--seeds/--methods``.

    Raises:
        ConfigError: a name or seed that is not the suite's (one line naming the flag and the choices).
    """
    def check(flag: str, asked: list, known: list) -> list:
        unknown = [v for v in asked if v not in known]
        if unknown:
            raise ConfigError(f"{flag}: {names(unknown)} not in the suite {suite.path} "
                              f"(expected some of {names(known)})")
        return [v for v in known if v in asked]  # the suite's order

    if datasets is not None:
        suite = dataclasses.replace(suite, datasets=check("--datasets", datasets, suite.datasets))
    if seeds is not None:
        suite = dataclasses.replace(suite, seeds=check("--seeds", seeds, suite.seeds))
    if methods is not None:
        kept = check("--methods", methods, list(suite.methods))
        suite = dataclasses.replace(suite, methods={m: suite.methods[m] for m in kept})
    return suite


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read a suite YAML; ``overrides`` (TrainConfig keys) replace the shared ``config``.

    Raises:
        ConfigError: one line naming the file: not found or not valid YAML, an unknown or renamed
            top-level key, an invalid TrainConfig key, missing methods/datasets/seeds, unknown
            protocol, a cross-dataset suite without ``source`` (or with the source among its
            targets), a baseline or schedule method that is not one of the suite's methods.
    """
    path = Path(absolute(default_file(path, "suites")))
    if not path.is_file():
        raise ConfigError(f"suite file not found: {path} ({shipped_note('suites')})")
    raw = read_yaml(path, "suite file")
    for old, new in RENAMED_KEYS.items():
        if old in raw:
            raise ConfigError(f"{path}: suite key '{old}' is now {new}")
    check_keys(raw, SUITE_KEYS, str(path), kind="suite key")
    check_schema(raw, SUITE_SCHEMA, path)
    for what, given in (("suite name", [raw.get("name", path.stem)]), ("suite dataset", [*raw["datasets"], *(
            [raw["source"]] if raw.get("source") else [])]), ("suite method", list(raw["methods"]))):
        for name in given:  # each names a folder (Ray's run folder, results/<method>/<dataset>/)
            try:
                check_name(name, what)
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    protocol, source = raw.get("protocol", "base2novel"), raw.get("source")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}: unknown protocol {brief(protocol)} (expected one of {', '.join(PROTOCOLS)})")
    if protocol == "cross_dataset" and (not source or source in raw["datasets"]):
        raise ConfigError(f"{path}: protocol cross_dataset needs 'source: <dataset>', not among the target datasets")
    if protocol == "base2novel" and source:
        raise ConfigError(f"{path}: 'source' applies to protocol cross_dataset only")
    trained = [source] if protocol == "cross_dataset" else raw["datasets"]
    _check_per_dataset(raw.get("per_dataset"), trained, f"{path}: per_dataset")
    if raw.get("search_dataset") not in (None, *raw["datasets"]):
        raise ConfigError(f"{path}: search_dataset {brief(raw['search_dataset'])} is not one of the suite's datasets")
    check_keys(overrides or {}, [f.name for f in dataclasses.fields(TrainConfig)], "command-line overrides")
    shared = {**(raw.get("config") or {}), **(overrides or {})}
    make_config(shared, source=f"{path} config")
    methods = {name: dict(spec or {}) for name, spec in raw["methods"].items()}
    for name, spec in methods.items():
        where = f"{path}: method '{name}' per_dataset"
        _check_per_dataset(spec.get("per_dataset"), trained, where)
        for dataset, keys in (spec.get("per_dataset") or {}).items():
            both = sorted(set(keys or {}) & set(spec))
            if both:
                raise ConfigError(f"{where} '{dataset}': {', '.join(both)} also set for every dataset by the "
                                  "method's own keys (keep one)")
    schedule_methods = _schedule_methods(raw.get("schedule_methods"), path)
    pairs = raw.get("pairs") or None
    for name in [raw.get("baseline"), *(schedule_methods or {}).values(), *(pairs or {}).items()]:
        for one in name if isinstance(name, tuple) else [name]:
            if one is not None and one not in methods:
                raise ConfigError(f"{path}: {brief(one)} is not one of the suite's methods")
    for method, base in (pairs or {}).items():
        if method == base:
            raise ConfigError(f"{path}: pairs: '{method}' is paired with itself")
    for schedule, name in (schedule_methods or {}).items():
        if methods[name].get("schedule", schedule) != schedule:
            raise ConfigError(f"{path}: schedule_methods {schedule}: method '{name}' has schedule "
                              f"{methods[name]['schedule']}")
    return Suite(raw.get("name", path.stem), path, list(raw["datasets"]), [int(s) for s in raw["seeds"]],
                 shared, methods, raw.get("per_dataset") or {}, protocol, source, raw.get("baseline"),
                 schedule_methods, raw.get("search_dataset"), pairs)


def _check_per_dataset(entries: dict | None, trained: list[str], where: str) -> None:
    """ConfigError naming ``where`` for an entry of a dataset no cell trains on (it would never
    apply) or a key that is not a TrainConfig key."""
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    for name, values in (entries or {}).items():
        if name not in trained:
            raise ConfigError(f"{where} entry {brief(name)} is not a dataset the suite trains on "
                              f"(expected one of {', '.join(trained)})")
        check_keys(values or {}, keys, f"{where} '{name}'")


def check_schema(raw: Any, schema: dict, path: str | Path) -> None:
    """Validate ``raw`` against a JSON Schema (``jsonschema``); raises ConfigError naming the file,
    the key path and the most relevant fault (``suite.yaml: seeds: 1 is not of type 'array'``)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        message = error.message.replace(repr(error.instance), brief(error.instance))  # never the whole value
        raise ConfigError(f"{path}: {where}: {message}")


def _schedule_methods(value: Any, path: Path) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(SCHEDULES):
        raise ConfigError(f"{path}: schedule_methods must map {' and '.join(SCHEDULES)} to method names, "
                          f"got {brief(value)}")
    return {schedule: str(value[schedule]) for schedule in SCHEDULES}


def _searched_keys(search: dict) -> set[str] | None:
    """The TrainConfig keys a search set (its space's parameters, ``search.json``); None when the
    file records no space."""
    space = search.get("space")
    if not isinstance(space, dict):
        return None
    params = space.get("params", space)
    return set(params) if isinstance(params, dict) else None


def method_values(suite: Suite, method: str, dataset: str) -> tuple[dict[str, Any], str]:
    """TrainConfig values of one method on one dataset, and what tuned them; the one merge of a
    method's configuration (``benchmark``, ``run`` and its searches all use it).

    Order (later wins): suite ``config``, its ``per_dataset`` entry, the method's ``per_dataset``
    entry, the method's ``config:`` file (without the keys a cell sets itself, :data:`CELL_KEYS`),
    the method's own keys (never also in its per_dataset: ``load_suite`` refuses that). Tuning:
    ``untuned``, ``given`` (a file that is no search's), or ``search_<split>`` read from the
    ``search.json`` next to a search's best config.
    A search's best config sets only what the search was searched over (the parameters of the
    space in its ``search.json``), so a quick search's shots, epochs or backbone never replace the
    suite's; the method's ``config_keys: [key, ...]`` (or ``all``) lets the file set more.

    Raises:
        ConfigError: the method's config file is missing or not a YAML mapping, or its
            ``config_keys`` is neither a list of keys nor ``all`` (naming the suite).
    """
    spec = dict(suite.methods[method])
    own = (spec.pop("per_dataset", None) or {}).get(dataset) or {}
    values: dict[str, Any] = {**suite.config, **(suite.per_dataset.get(dataset) or {}), **own}
    file = spec.pop("config", None)
    extra = spec.pop("config_keys", [])
    if extra != "all" and (not isinstance(extra, list) or not all(isinstance(k, str) for k in extra)):
        raise ConfigError(f"{suite.path}: method '{method}' config_keys must be a list of keys or 'all', got {brief(extra)}")
    tuning, tuned = "untuned", {}
    if file is not None:
        file = Path(relative_to_file(str(file).format(dataset=dataset), suite.path))
        if not file.is_file():
            raise ConfigError(f"{suite.path}: method '{method}' config file not found: {file}")
        tuned = read_yaml(file, "config file")
        search = file.parent / "search.json"  # present when the file is a search's best config
        tuning = "given"
        if search.is_file():
            info = json.loads(search.read_text())
            tuning = f"search_{info['objective']}"
            searched = _searched_keys(info)
            if searched is not None and extra != "all":
                tuned = {k: v for k, v in tuned.items() if k in searched or k in extra}
    values.update({k: v for k, v in tuned.items() if k not in CELL_KEYS})
    values.update(spec)
    values.update(dataset=dataset, protocol=suite.protocol)
    if suite.protocol == "cross_dataset":
        values["targets"] = ",".join(suite.datasets)
    return values, tuning
