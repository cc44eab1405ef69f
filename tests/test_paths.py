"""Path resolution: relative to the working directory or to the naming file, checkpoint files vs tags."""
import os

import pytest

from anchoropt.config import ConfigError, make_config
from anchoropt.paths import absolute, is_checkpoint_path, relative_to_file, shipped
from tests.helpers import REPO_ROOT


def test_absolute_and_relative_to_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("data/x") == str(tmp_path / "data" / "x")
    assert absolute("../y/./z", "/a/b") == "/a/y/z"
    assert absolute("~/c") == os.path.expanduser("~/c")
    assert relative_to_file("tuned.yaml", "suites/s.yaml") == str(tmp_path / "suites" / "tuned.yaml")
    assert relative_to_file("/abs/t.yaml", "suites/s.yaml") == "/abs/t.yaml"


def test_checkpoint_files_are_told_from_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").write_bytes(b"")
    assert [is_checkpoint_path(v) for v in ("toy", "none", "", "openai", "laion2b_s34b_b79k")] == [False] * 5
    assert [is_checkpoint_path(v) for v in ("m.pt", "a/b", "~/m", "weights")] == [True] * 4
    cfg = make_config({"pretrained": "weights", "data_root": "d", "descriptions": "x.json", "cache_dir": "~/c"})
    assert (cfg.pretrained, cfg.data_root, cfg.descriptions) == (str(tmp_path / "weights"), str(tmp_path / "d"),
                                                                 str(tmp_path / "x.json"))
    assert cfg.cache_dir == os.path.expanduser("~/c") and make_config({"pretrained": "openai"}).pretrained == "openai"


def test_shipped_files_in_a_checkout_are_the_repository_folders():
    assert shipped("suites", "toy11.yaml") == REPO_ROOT / "benchmarks" / "toy11.yaml"
    assert shipped("spaces", "anchors.yaml") == REPO_ROOT / "search_spaces" / "anchors.yaml"


def test_readme_paths_of_default_suites_and_spaces_work_outside_a_checkout(tmp_path, monkeypatch, capsys):
    """Issue 26: from a non-editable install the README's benchmarks/toy11.yaml and
    search_spaces/anchors.yaml failed outside a checkout, and the error did not point at the shipped copies."""
    from anchoropt.paths import shipped
    from anchoropt.search.spec import SearchError, read_space
    from anchoropt.suite import load_suite

    monkeypatch.chdir(tmp_path)  # no benchmarks/ or search_spaces/ here
    suite = load_suite("benchmarks/toy11.yaml")
    assert suite.name == "toy11" and suite.path == shipped("suites", "toy11.yaml")
    assert read_space("search_spaces/anchors.yaml")[2] == str(shipped("spaces", "anchors.yaml").resolve())
    assert "reading the copy shipped with anchoropt" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"suite file not found: .*nope\.yaml \(the suites shipped with "
                                           r"anchoropt \(.*\): .*toy11\.yaml"):
        load_suite("benchmarks/nope.yaml")
    with pytest.raises(SearchError, match=r"the spaces shipped with anchoropt .*anchors\.yaml"):
        read_space("nope.yaml")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "toy11.yaml").write_text("a local file wins: not a suite\n")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load_suite("benchmarks/toy11.yaml")
