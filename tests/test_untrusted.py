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
