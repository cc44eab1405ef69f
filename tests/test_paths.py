"""Path resolution: relative to the working directory or to the naming file, checkpoint files vs tags."""
import os

from anchoropt.config import make_config
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
