"""The one YAML reader: one-line errors naming the file, duplicate keys refused."""
import pytest

from anchoropt.errors import ConfigError
from anchoropt.yamlio import parse_yaml, read_yaml


@pytest.mark.parametrize("content, words", [
    (b"a: 1\nb: [2\n", "not valid YAML: line 3, column 1"),
    (b"a: 1\nb:\n  c: 1\n  c: 2\n", "line 4, column 3: duplicate key 'c' (first at line 3)"),
    (b"- 1\n- 2\n", "expected a mapping of key: value at the top level, got list"),
    (b"a: \xff\xfe\n", "not UTF-8 text"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "f.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        read_yaml(path, "suite file")
    assert str(path) in str(exc.value) and words in str(exc.value) and "\n" not in str(exc.value)


def test_missing_folder_empty_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found: .*nope.yaml"):
        read_yaml(tmp_path / "nope.yaml", "suite file")
    with pytest.raises(ConfigError, match="is a folder"):
        read_yaml(tmp_path, "config file")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert read_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    assert read_yaml(tmp_path / "list.yaml", mapping=False) == [1, 2]
    assert parse_yaml("{a: 1, b: {a: 2}}", "x") == {"a": 1, "b": {"a": 2}}  # equal keys at other levels
    with pytest.raises(ConfigError, match="lr=x: not valid YAML"):
        parse_yaml("{a: 1, a: 2}", "lr=x")


# nine lists of nine aliases of the one before: 9^9 (~387 million) strings once expanded
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi"))


# five lists of nine aliases over one 200 kB string: 59049 values (under MAX_VALUES) but 12 GB of text
LONG_BOMB = f'a: &a ["{"x" * 200_000}"]\n' + "".join(
    f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcd", "bcde"))


@pytest.mark.parametrize("bomb", [BOMB, LONG_BOMB], ids=["many_values", "long_text"])
def test_alias_bomb_refused_in_every_yaml_reader(tmp_path, bomb):
    """Suite, search space (its description too) and --config files all go through yamlio."""
    from anchoropt.config import load_config
    from anchoropt.search.space import SpaceError, load_space
    from anchoropt.suite import load_suite

    files = {"suite.yaml": bomb, "config.yaml": bomb,
             "space.yaml": "description: &desc\n" + "".join(f"  {line}\n" for line in bomb.splitlines())
             + "params: {lr: {type: float, low: 0.001, high: 0.1, log: true}}\n"}
    readers = {"suite.yaml": load_suite, "config.yaml": load_config, "space.yaml": load_space}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises((ConfigError, SpaceError)) as exc:
            readers[name](tmp_path / name)
        message = str(exc.value)
        assert name in message and "aliases expand to more than" in message and "\n" not in message


def test_aliases_within_bounds_and_merge_keys_are_read():
    assert parse_yaml("x: &x {a: 1}\ny: *x\nz: {<<: *x, a: 2, b: 3}", "f") == {
        "x": {"a": 1}, "y": {"a": 1}, "z": {"a": 2, "b": 3}}
    with pytest.raises(ConfigError, match="alias refers to itself"):
        parse_yaml("a: &a [1, *a]", "f")


def test_errors_never_repr_a_whole_user_value(tmp_path):
    """A huge value in a wrong place is named in a short error, not dumped whole."""
    from anchoropt.config import make_config
    from anchoropt.suite import load_suite

    with pytest.raises(ConfigError) as exc:
        make_config({"epochs": ["x" * 1000] * 1000})
    assert len(str(exc.value)) < 200
    suite = tmp_path / "s.yaml"
    suite.write_text("datasets: [toy_shape]\nseeds: [1]\nmethods: {a: {}}\nschedule_methods: "
                     + repr(["y" * 5000] * 50) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_suite(suite)
    assert len(str(exc.value)) < 400 and "\n" not in str(exc.value)


def test_errors_never_print_a_long_key_or_name_whole(tmp_path):
    """Keys and names the user wrote (a space parameter, an unknown config key, a suite's per_dataset
    entry or baseline, a thousand unknown overrides) are shortened in errors too."""
    import yaml

    from anchoropt.config import load_config
    from anchoropt.search.space import SpaceError, load_space
    from anchoropt.suite import load_suite

    long = "k" * 5000
    suite = {"datasets": ["toy_shape"], "seeds": [1], "methods": {"a": {"method": "coop"}}}
    files = {"space.yaml": (load_space, {"params": {long: {"type": "float", "low": 0, "high": 1}}}),
             "config.yaml": (load_config, {long: 1}),
             "entry.yaml": (load_suite, {**suite, "per_dataset": {long: {"lr": 1}}}),
             "baseline.yaml": (load_suite, {**suite, "baseline": long})}
    for name, (reader, content) in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
        with pytest.raises((ConfigError, SpaceError)) as exc:
            reader(tmp_path / name)
        assert len(str(exc.value)) < 300 and "kkk..." in str(exc.value), name
    with pytest.raises(ConfigError, match=r"unknown key\(s\) k0, k1, k10, .* and 992 more$"):
        load_config(None, [f"k{i}=1" for i in range(1000)])
