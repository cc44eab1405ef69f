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
