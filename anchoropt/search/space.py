"""Declarative search spaces (YAML) turned into Optuna define-by-run functions.

A space file is a mapping ``params:`` of TrainConfig field -> spec, drawn in file order except
that a conditional parameter is drawn after the parameters its ``when`` refers to::

    params:
      method: anchoropt                                    # fixed value (shorthand)
      n_anchors: {type: int, low: 1, high: 8}              # inclusive bounds, optional step
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      kd_weight: {type: categorical, choices: [0, 1, 10, 100, 1000]}
      schedule: {type: categorical, choices: [one_stage, two_stage]}
      period: {type: int, low: 1, high: 16, log: true, when: {schedule: one_stage}}
      anchor_epochs: {type: int, low: 10, high: 100, step: 10, when: {schedule: two_stage}}
      mse_weight: {type: fixed, value: 100}

``type`` is ``int``, ``float`` (``log: true`` for log-uniform; ``step`` for a grid),
``categorical`` (``choices``) or ``fixed`` (``value``). ``when`` maps earlier parameters
to a value or a list of values; all must hold (AND) for the parameter to be drawn, otherwise it
keeps the base configuration's value and does not appear in the trial's parameters.

:func:`load_space` validates the whole file and raises :class:`SpaceError` naming the file and
the key; :meth:`SearchSpace.define_by_run` is what ``OptunaSearch(space=...)`` takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from anchoropt.config import ConfigError, TrainConfig, _coerce, make_config
from anchoropt.errors import brief, names, short
from anchoropt.yamlio import read_yaml

TYPES = ("int", "float", "categorical", "fixed")
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "value", "when"}
#: keys a space may not draw: they are set by the search itself
RESERVED = {"eval_split": "the split scored is the search's --objective, not drawn by the space",
            "cache_dir": "all trials share the search's cache_dir"}


class SpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One parameter of a space (see the module docstring for the fields)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None
    when: dict[str, tuple] = field(default_factory=dict)

    def active(self, drawn: dict[str, Any]) -> bool:
        """Whether every condition holds for the values drawn so far."""
        return all(name in drawn and drawn[name] in values for name, values in self.when.items())

    def values(self) -> list:
        """Every value this parameter can take when it is a finite set, else its bounds."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "fixed":
            return [self.value]
        return [self.low, self.high]


@dataclass
class SearchSpace:
    """An ordered list of :class:`Param` read from ``source``."""

    params: list[Param]
    source: str = "<space>"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def define_by_run(self, trial) -> dict[str, Any]:
        """Draw one configuration from an ``optuna.Trial`` (define-by-run, as ``OptunaSearch(space=...)``
        takes it): every active parameter, drawn or fixed. Inactive conditional parameters are
        neither drawn nor returned, so they keep the base configuration's value."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue
            if p.type == "fixed":
                values[p.name] = p.value
            elif p.type == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.type == "float":
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
            else:
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        return values

    __call__ = define_by_run

    def max_value(self, name: str, default: Any) -> Any:
        """Largest value a numeric parameter can take (``default`` when the space leaves it)."""
        p = self.get(name)
        if p is None:
            return default
        vals = [v for v in p.values() if isinstance(v, (int, float))]
        return max(vals) if vals else default


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file. Raises SpaceError naming the file and key."""
    try:
        raw = read_yaml(path, "search space file", mapping=False)
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    return parse_space(raw, source=str(path))


def parse_space(raw: Any, source: str = "<space>") -> SearchSpace:
    """Validate a space given as a mapping (``{"params": {...}}`` or the params mapping itself)."""
    if isinstance(raw, dict) and "params" in raw:
        extra = sorted(set(raw) - {"params", "description"})
        if extra:
            raise SpaceError(f"{source}: unknown top-level key(s) {names(extra)} (expected params, description)")
        raw = raw["params"]
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: expected a non-empty mapping 'params: {{name: spec}}'")
    hints = get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    for name in raw:
        if name not in known:
            raise SpaceError(f"{source}: {short(name)}: unknown parameter (not a TrainConfig field)")
        if name in RESERVED:
            raise SpaceError(f"{source}: {name}: {RESERVED[name]}")
    params: list[Param] = []
    for name in _draw_order(raw, source):
        params.append(_parse_param(name, raw[name], f"{source}: {name}", hints[name], params))
    return SearchSpace(params, source)


def _draw_order(raw: dict, source: str) -> list[str]:
    """File order, except that a parameter comes after those its ``when`` refers to."""
    deps = {}
    for name, spec in raw.items():
        when = spec.get("when") if isinstance(spec, dict) else None
        refs = list(when) if isinstance(when, dict) else []
        for ref in refs:
            if ref not in raw:
                raise SpaceError(f"{source}: {name}: when refers to {brief(ref)}, which is not a parameter of the space")
            if ref == name:
                raise SpaceError(f"{source}: {name}: when refers to the parameter itself")
        deps[name] = set(refs)
    order: list[str] = []
    while len(order) < len(raw):
        ready = [n for n in raw if n not in order and deps[n] <= set(order)]
        if not ready:
            stuck = [n for n in raw if n not in order]
            raise SpaceError(f"{source}: {names(stuck)}: the when conditions refer to each other in a cycle")
        order.append(ready[0])
    return order


def _parse_param(name: str, spec: Any, where: str, hint: Any, earlier: list[Param]) -> Param:
    if not isinstance(spec, dict):
        spec = {"type": "fixed", "value": spec}
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown spec key(s) {names(unknown)} (allowed: {', '.join(sorted(SPEC_KEYS))})")
    kind = spec.get("type")
    if kind is None:
        kind = "categorical" if "choices" in spec else "fixed" if "value" in spec else None
    if kind not in TYPES:
        raise SpaceError(f"{where}: unknown type {brief(kind)} (expected one of {', '.join(TYPES)})")

    def coerce(value: Any, what: str) -> Any:
        try:
            return _coerce(name, value, hint)
        except ConfigError as err:
            raise SpaceError(f"{where}: {what}: {err}") from None

    when = _parse_when(spec.get("when"), where, earlier)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {brief(log)}")
    if kind == "fixed":
        if "value" not in spec:
            raise SpaceError(f"{where}: a fixed parameter needs 'value'")
        value = coerce(spec["value"], "value")
        _check_field(name, value, where, "value")
        return Param(name, kind, value=value, when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: choices must be a non-empty list, got {brief(choices)}")
        choices = [coerce(c, "choice") for c in choices]
        for c in choices:
            _check_field(name, c, where, "choice")
        if len(set(map(repr, choices))) != len(choices):
            raise SpaceError(f"{where}: duplicate choices {choices}")
        return Param(name, kind, choices=tuple(choices), when=when)
    # numeric
    target = int if kind == "int" else float
    field_type = [t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)][0]
    if field_type not in (int, float) or (kind == "float" and field_type is int):
        raise SpaceError(f"{where}: type {kind} does not fit the field's type {field_type.__name__}")
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(f"{where}: {kind} parameter needs '{key}'")
        value = spec[key]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpaceError(f"{where}: {key} must be a finite number, got {brief(spec[key])}")
        if target is int and value != int(value):
            raise SpaceError(f"{where}: {key} must be an integer, got {brief(value)}")
        bounds[key] = target(value)
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise SpaceError(f"{where}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: log scale needs low > 0, got low={low}")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or \
                (target is int and step != int(step)):
            raise SpaceError(f"{where}: step must be a positive {'integer' if target is int else 'number'}, "
                             f"got {brief(step)}")
        if log and (target is float or step != 1):
            raise SpaceError(f"{where}: step and log cannot be combined")
        step = target(step)
    for key, value in (("low", low), ("high", high)):
        _check_field(name, coerce(value, key), where, key)
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _check_field(name: str, value: Any, where: str, what: str) -> None:
    """The field's own checks (choices such as schedule, ranges such as n_anchors >= 1)."""
    try:
        make_config({name: value}, source=where)
    except ConfigError as err:
        raise SpaceError(f"{where}: {what} {brief(value)} is not a valid {name}: {err}") from None


def _parse_when(when: Any, where: str, earlier: list[Param]) -> dict[str, tuple]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise SpaceError(f"{where}: when must be a mapping {{parameter: value or [values]}}, got {brief(when)}")
    out = {}
    by_name = {p.name: p for p in earlier}
    for ref, values in when.items():
        if ref not in by_name:
            raise SpaceError(f"{where}: when refers to '{ref}', which is not a parameter of the space")
        values = tuple(values) if isinstance(values, list) else (values,)
        p = by_name[ref]
        if p.type in ("categorical", "fixed"):
            possible = p.values()
            bad = [v for v in values if v not in possible]
            if bad:
                raise SpaceError(f"{where}: when {ref} in {list(values)}: {bad} not among {ref}'s values {possible}")
        out[ref] = values
    return out
