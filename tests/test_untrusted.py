"""Untrusted input (issue 28): config values parsed once as typed, names, paths, pre-Ray checks."""
import pytest

from anchoropt.config import load_config, make_config, typed_overrides
from anchoropt.errors import ConfigError


def test_cli_values_are_typed_by_their_key_never_cut_at_hash():
    cfg = load_config(None, ["ctx_init=a photo #1 of", "cache_dir=/tmp/cache #1", "lr=1e-3", "flip=yes",
                             "quick_gelu=", "epochs=3"])
    assert cfg.ctx_init == "a photo #1 of" and cfg.cache_dir == "/tmp/cache #1"
    assert cfg.lr == 0.001 and cfg.flip is True and cfg.quick_gelu is None and cfg.epochs == 3
    assert typed_overrides(["anchor_word=[x]", "ctx_init='q'"]) == {"anchor_word": "[x]", "ctx_init": "'q'"}
    for bad, words in [("epochs=3.5", "epochs must be int, got '3.5'"),
                       ("flip=maybe", "flip must be true or false"), ("lr=0.1 #x", "lr must be float")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, [bad])


def test_yaml_values_are_never_parsed_again(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("ctx_init: 'a photo #2'\nanchor_word: '[1, 2]'\nlr: 1e-3\n")
    cfg = load_config(config)
    assert cfg.ctx_init == "a photo #2" and cfg.anchor_word == "[1, 2]" and cfg.lr == 0.001
    with pytest.raises(ConfigError, match="epochs must be int"):
        make_config({"epochs": "10 #x"})


def test_dataset_names_are_plain_names():
    for bad in ("../../../x", "/abs", "a/b", "..", "toy_count #v2", "<img>"):
        with pytest.raises(ConfigError, match="is not a plain name"):
            load_config(None, [f"dataset={bad}"])
    with pytest.raises(ConfigError, match="dataset 'a/b' is not a plain name"):
        load_config(None, ["protocol=cross_dataset", "targets=toy_count,a/b"])
    assert load_config(None, ["dataset=imagenet-sketch.v2"]).dataset == "imagenet-sketch.v2"


@pytest.mark.parametrize("where, bad", [("method", "../../escaped"), ("method", "a/b"), ("dataset", "../x"),
                                        ("name", "../../run")])
def test_suite_names_are_plain_names(tmp_path, where, bad):
    import yaml

    from anchoropt.suite import load_suite

    suite = {"name": "s", "datasets": ["toy_shape"], "seeds": [1], "methods": {"coop": {"method": "coop"}}}
    if where == "method":
        suite["methods"] = {bad: {"method": "coop"}}
    elif where == "dataset":
        suite["datasets"] = [bad]
    else:
        suite["name"] = bad
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert str(path) in str(exc.value) and "is not a plain name" in str(exc.value) and bad in str(exc.value)


def _custom_dataset(root, entry_path, meta_extra=None):
    """A one-class custom dataset (meta.json) whose single train image is ``entry_path``."""
    import json

    folder = root / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"split_file": "split.json", **(meta_extra or {})}))
    entry = [[entry_path, 0, "cat"]]
    (folder / "split.json").write_text(json.dumps({"train": entry, "val": entry, "test": entry}))
    return folder


@pytest.mark.parametrize("entry", ["../../outside.png", "../meta.json", "/etc/passwd", "a/../../../x.png"])
def test_split_file_paths_stay_inside_the_dataset(tmp_path, entry):
    from anchoropt.data.datasets import DataError, read_dataset

    (tmp_path / "outside.png").write_bytes(b"png")
    _custom_dataset(tmp_path / "root", entry)
    with pytest.raises(DataError, match=r"split.json train\[0\]: path .* leads outside .*mine/images"):
        read_dataset(tmp_path / "root", "mine")


@pytest.mark.parametrize("key, value", [("image_dir", "../.."), ("split_file", "/etc/hosts"),
                                        ("descriptions", "../../d.json")])
def test_meta_json_paths_stay_inside_the_dataset(tmp_path, key, value):
    from anchoropt.data.datasets import DataError, read_dataset

    _custom_dataset(tmp_path / "root", "x.png", {key: value})
    with pytest.raises(DataError, match=f"meta.json {key}: path .* leads outside"):
        read_dataset(tmp_path / "root", "mine")
