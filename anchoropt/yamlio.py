"""Reading YAML files, the one place: a one-line error naming the file and line, and no duplicate keys.

PyYAML keeps the last of two equal keys of a mapping silently; a duplicated suite method or
space parameter then hides the first one. The loader here refuses them (YAML 1.2 requires
mapping keys to be unique).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from anchoropt.errors import ConfigError
from anchoropt.io import read_text


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on a mapping key seen twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: SafeLoader's own error follows
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _one_line(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a PyYAML error (its ``str`` spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; ``source`` names it in errors. Raises ConfigError (one line) for a syntax
    error or a duplicate key."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(err)}") from None


def read_yaml(path: str | Path, what: str = "YAML file", mapping: bool = True) -> Any:
    """Read a YAML file; an empty file reads as ``{}`` when ``mapping``.

    Args:
        path: the file.
        what: what the file is, for the not-found message (``suite file``, ``config file``, ...).
        mapping: require a mapping at the top level.

    Raises:
        ConfigError: one line naming the file: not found, not a file, not UTF-8, not valid YAML
            (with line and column), a duplicate key, or (``mapping``) not a mapping.
    """
    path = Path(path)
    data = parse_yaml(read_text(path, what, ConfigError), str(path))
    if mapping:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value at the top level, "
                              f"got {type(data).__name__}")
    return data
