"""Reading YAML files, the one place: a one-line error naming the file and line, no duplicate keys,
and aliases bounded.

PyYAML keeps the last of two equal keys of a mapping silently; a duplicated suite method or
space parameter then hides the first one. The loader here refuses them (YAML 1.2 requires
mapping keys to be unique).

Aliases (``*name``) are allowed, as a suite shares one method's ``per_dataset`` table with another
(``benchmarks/base2new_11.yaml``), but a document whose aliases expand to more than
:data:`MAX_VALUES` values or :data:`MAX_CHARS` characters of scalar text, or refer to themselves, is
refused before it is built: nine nested aliases of nine ("billion laughs") make 10^9 values, and five
nested aliases of nine over one 200 kB string make 12 GB of text with only 59049 values; anything
walking the result (JSON dumps such as a search's ``search.json``, validation, a repr in an error)
would materialise either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from anchoropt.errors import ConfigError, brief
from anchoropt.io import read_text


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises on a mapping key seen twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: SafeLoader's own error follows
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {brief(key)} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


#: most values (scalars, lists, mappings) a YAML document may expand to, aliases counted as often as used
MAX_VALUES = 200_000
#: most characters of scalar text a YAML document may expand to, aliases counted as often as used
MAX_CHARS = 20_000_000


def _expanded_size(node: yaml.Node, source: str) -> tuple[int, int]:
    """(values, characters of scalar text) that ``node`` stands for with every alias expanded
    (memoised per node, so linear in the document). Raises ConfigError for more than
    :data:`MAX_VALUES` values or :data:`MAX_CHARS` characters, or an alias inside its own anchor."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> tuple[int, int]:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise ConfigError(f"{source}: line {n.start_mark.line + 1}: a YAML alias refers to itself")
        open_nodes.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            values, chars = 1, len(n.value)
        else:
            children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else n.value
            parts = [size(c) for c in children]
            values, chars = 1 + sum(p[0] for p in parts), sum(p[1] for p in parts)
        open_nodes.discard(id(n))
        if values > MAX_VALUES or chars > MAX_CHARS:
            raise ConfigError(f"{source}: line {n.start_mark.line + 1}: YAML aliases expand to more than "
                              f"{MAX_VALUES} values or {MAX_CHARS} characters (an alias bomb?)")
        sizes[id(n)] = values, chars
        return values, chars

    return size(node)


def _one_line(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a PyYAML error (its ``str`` spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; ``source`` names it in errors. Raises ConfigError (one line) for a syntax
    error, a duplicate key, or aliases expanding past :data:`MAX_VALUES` values or :data:`MAX_CHARS`
    characters, or into themselves."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(err)}") from None
    finally:
        loader.dispose()


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
