"""Malformed input of every kind (config, suite and space schemas, duplicate YAML keys, CLI flags) ends in exit 2 and one line.

The cases are generated from the schemas themselves: every TrainConfig field gets values of the
wrong type, every ranged field values outside its range, and the suite and space files get each of
their keys broken in turn, so a field added later is covered without editing this file.
"""
from __future__ import annotations

import json
import typing
import warnings
from dataclasses import fields

import pytest
import yaml

from anchoropt.cli import main
from anchoropt.config import ConfigError, TrainConfig, load_config

# values outside the range of each ranged field (all other values of the right type are accepted)
OUT_OF_RANGE = {
    "n_descriptions": [0], "n_ctx": [0, -3], "n_anchors": [0], "gumbel_tau": [0, -1.0], "kd_temperature": [0],
    "ce_weight": [-1], "kd_weight": [-0.5], "mse_weight": [-1000], "lr": [0, -0.1, ".inf", "-.inf", ".nan"],
    "epochs": [-1], "batch_size": [0], "momentum": [-0.1, 1.0], "weight_decay": [-5e-4], "warmup_epochs": [-1],
    "warmup_lr": [-1e-5], "anchor_lr": [0, ".inf"], "anchor_epochs": [-2], "anchor_batch_size": [0],
    "period": [0], "train_views": [0], "crop_scale": [0, 1.5, ".nan"], "device": ["banana", "cuda:x", "gpu"],
    "method": ["banana"], "schedule": ["three_stage"], "position_eval": ["mean"], "eos_index": ["wrong"],
    "objective": ["train"], "protocol": ["few_shot"], "targets": ["toy_shape"],
}


def _wrong_types(kind) -> list:
    base = [[1, 2], {"a": 1}]
    if kind is int:
        return base + ["1.5", "ten", True]
    if kind is float:
        return base + ["abc", True]
    if kind is bool:
        return base + ["maybe", 3]
    return base


def _config_cases() -> list[tuple[str, object]]:
    hints = typing.get_type_hints(TrainConfig)
    cases = []
    for f in fields(TrainConfig):
        kind = [t for t in getattr(hints[f.name], "__args__", (hints[f.name],)) if t is not type(None)][0]
        cases += [(f.name, v) for v in _wrong_types(kind) + OUT_OF_RANGE.get(f.name, [])]
    return cases + [("n_anchor", 2), ("Lr", 0.1)]  # unknown keys


def _run(argv, capsys) -> str:
    """Run the CLI in this process; assert exit 2 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _yaml_value(value) -> str:
    return value if isinstance(value, str) and value.startswith((".inf", "-.inf", ".nan")) else json.dumps(value)


@pytest.mark.parametrize("key,value", _config_cases(), ids=lambda v: str(v))
def test_every_malformed_config_value_is_one_line_exit_2(key, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    # an otherwise valid config whose data_root does not exist: accepting the bad value shows as a data error
    path.write_text(f"data_root: {tmp_path / 'no_data'}\n{key}: {_yaml_value(value)}\n")
    line = _run(["train", "--config", path], capsys)
    assert key in line and "data root not found" not in line, line


@pytest.mark.parametrize("item", ["lr=inf", "lr=nan", "warmup_lr=-1e-5", "ce_weight=-1", "kd_weight=-1",
                                  "mse_weight=-1", "weight_decay=-0.1", "device=banana", "epochs=1.5"])
def test_malformed_overrides_are_refused(item, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _run(["train", f"data_root={tmp_path / 'no_data'}", item], capsys)
    assert item.split("=")[0] in line, line


def _valid_suite(tmp_path) -> dict:
    return {"name": "s", "datasets": ["eurosat"], "seeds": [1, 2], "config": {"data_root": str(tmp_path / "no_data")},
            "methods": {"coop": {"method": "coop"}, "anchor": {"method": "anchoropt"}}, "baseline": "coop"}


SUITE_BREAKS = {
    "seeds": [1, [], ["a"], [1, 1], [1.5], "1,2", None, [True]],
    "datasets": ["eurosat", [], [1], ["eurosat", "eurosat"], [""], {"eurosat": 1}],
    "methods": [[], {}, {"coop": 3}, {"coop": ["method", "coop"]}, "coop", {"coop": {"n_ctxx": 2}},
                {"coop": {"lr": ".inf"}}, {"coop": {"per_dataset": {"dtd": {}}}}, {"coop": {"per_dataset": 3}},
                {"coop": {"per_dataset": {"eurosat": {"n_ctxx": 2}}}},
                {"coop": {"n_ctx": 2, "per_dataset": {"eurosat": {"n_ctx": 4}}}}],
    "config": [[1], "x", {"lr": -1}, {"warmup_lr": -1}, {"epochs": "many"}],
    "per_dataset": [{"dtd": {}}, {"eurosat": 3}, [1]],
    "protocol": ["few_shot", 1],
    "schedule_methods": ["coop", ["coop"], {"one_stage": "coop"}, {"one_stage": "coop", "two_stage": "nope"}],
    "schedules": [["coop", "anchor"]],
    "baseline": ["nope", 1],
    "pairs": [["coop"], {"coop": "nope"}, {"coop": "coop"}, {"coop": 1}],
    "name": [["a"], ""],
    "search_dataset": ["dtd", 3],
    "source": ["dtd"],
    "baselin": ["coop"],
}


def _suite_cases():
    return [(key, value) for key, values in SUITE_BREAKS.items() for value in values]


@pytest.mark.parametrize("key,value", _suite_cases(), ids=lambda v: str(v))
def test_every_malformed_suite_is_one_line_exit_2(key, value, tmp_path, capsys):
    suite = _valid_suite(tmp_path)
    suite[key] = value
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite).replace("'.inf'", ".inf"))
    line = _run(["benchmark", path, "--results", tmp_path / "results"], capsys)
    assert "suite.yaml" in line, line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "datasets: [eurosat\n", "just a string", "\xff\xfe".encode("latin-1")])
def test_suite_file_that_is_not_a_mapping_is_one_line(text, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert "suite.yaml" in _run(["benchmark", path, "--results", tmp_path / "r"], capsys)


SPACE_BREAKS = [
    {}, {"params": []}, {"params": {}}, {"params": {"n_anchors": {"type": "intt", "low": 1, "high": 4}}},
    {"params": {"n_anchors": {"type": "int", "low": 4, "high": 1}}},
    {"params": {"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
    {"params": {"lr": {"type": "float", "low": "a", "high": 0.1}}},
    {"params": {"lr": {"type": "float", "low": 1e-4, "high": ".inf"}}},
    {"params": {"lr": {"type": "float", "low": -0.1, "high": 0.1}}},
    {"params": {"warmup_lr": {"type": "categorical", "choices": [-1e-5, 1e-5]}}},
    {"params": {"n_anchors": {"type": "int", "low": 1, "high": 4, "step": -1}}},
    {"params": {"n_anchors": {"type": "int", "low": 1, "high": 4, "stepp": 1}}},
    {"params": {"n_anchorz": {"type": "int", "low": 1, "high": 4}}},
    {"params": {"method": {"type": "categorical", "choices": []}}},
    {"params": {"method": {"type": "categorical", "choices": ["coop", "banana"]}}},
    {"params": {"period": {"type": "int", "low": 1, "high": 4, "when": {"schedule": "one_stage"}}}},
    {"params": {"mse_weight": {"type": "fixed"}}},
    {"params": {"device": "banana"}},
    {"params": {"objective": "test"}},
    {"params": {"n_anchors": [1, 2]}},
    {"params": {"n_anchors": {"type": "int", "low": 1, "high": 4}}, "extra": 1},
]


@pytest.mark.parametrize("space", SPACE_BREAKS, ids=lambda s: json.dumps(s)[:60])
def test_every_malformed_space_is_one_line_exit_2(space, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space).replace("'.inf'", ".inf"))
    line = _run(["search", "--space", path, "--num-trials", 1, "--out", tmp_path / "s"], capsys)
    assert "space.yaml" in line, line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv", [
    ["benchmark", "suite.yaml", "--results", "r", "--cpus-per-trial", "-1"],
    ["benchmark", "suite.yaml", "--results", "r", "--cpus-per-trial", "0"],
    ["benchmark", "suite.yaml", "--results", "r", "--max-concurrent", "0"],
    ["benchmark", "suite.yaml", "--results", "r", "--gpus-per-trial", "-0.5"],
    ["benchmark", "suite.yaml", "--results", "r", "--num-cpus", "0"],
    ["search", "--space", "s.yaml", "--num-trials", "0", "--out", "o"],
    ["run", "--search-trials", "-1"],
    ["search", "--space", "s.yaml", "--num-trials", "3", "--out", "o", "--max-concurrent", "nan"],
])
def test_bad_resource_flags_are_refused_by_the_parser(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: argument --" in err.strip().splitlines()[-1], err


def test_device_not_on_this_machine_is_one_line(tiny_cfg, capsys, tmp_path, monkeypatch):
    import torch

    from anchoropt.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda but torch .* use device=cpu"):
        resolve_device("cuda")
    cfg = tiny_cfg()
    overrides = [f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None and k != "device"]
    line = _run(["train", "--out", tmp_path / "run", *overrides, "device=cuda:0"], capsys)
    assert "device=cuda:0" in line


@pytest.mark.parametrize("content", [b"\xff\xfe\x00bad", b'["a photo of a forest"]', b'{"Forest": "one string"}'])
def test_bad_description_file_is_one_line_naming_it(content, tiny_cfg, capsys, tmp_path):
    path = tmp_path / "descriptions.json"
    path.write_bytes(content)
    overrides = [f"{k}={v}" for k, v in tiny_cfg().to_dict().items() if v is not None]
    line = _run(["train", "--out", tmp_path / "run", *overrides, f"descriptions={path}"], capsys)
    assert str(path) in line, line


def test_cache_dir_or_out_that_is_a_file_is_one_line(tiny_cfg, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    overrides = [f"{k}={v}" for k, v in tiny_cfg().to_dict().items() if v is not None and k != "cache_dir"]
    assert "cache_dir" in _run(["train", "--out", tmp_path / "run", *overrides, f"cache_dir={a_file}"], capsys)
    assert "--out" in _run(["train", "--out", a_file, *overrides], capsys)
    assert "--out" in _run(["report", str(tmp_path), "--out", a_file], capsys)


def test_shots_above_what_a_class_has_warns(eurosat_root):
    from anchoropt.data import build_dataset, fewshot_splits

    data = build_dataset(eurosat_root, "eurosat")  # 6 training images per class
    with pytest.warns(UserWarning, match="shots=16 but 6 of 6 classes of eurosat have fewer training images"):
        fewshot_splits(data, 16, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fewshot_splits(data, 4, seed=1)


def test_typed_config_accepts_what_it_should():
    cfg = load_config(overrides=["lr=1e-3", "ce_weight=0", "weight_decay=0", "device=cuda:1", "momentum=0"])
    assert (cfg.lr, cfg.ce_weight, cfg.device) == (1e-3, 0.0, "cuda:1")


@pytest.mark.parametrize("command,name,text", [
    ("train", "config.yaml", "lr: 0.01\nepochs: 2\nlr: 0.02\n"),
    ("benchmark", "suite.yaml", "datasets: [eurosat]\nseeds: [1]\nmethods:\n  coop: {method: coop}\n"
                                "  coop: {method: anchoropt}\n"),
    ("benchmark", "suite.yaml", "datasets: [eurosat]\nseeds: [1]\nseeds: [2]\nmethods: {coop: {method: coop}}\n"),
    ("search", "space.yaml", "params:\n  lr: {type: float, low: 0.001, high: 0.01}\n"
                             "  lr: {type: float, low: 5, high: 1}\n"),
])
def test_duplicate_yaml_keys_are_one_line_exit_2(command, name, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_text(text)
    argv = {"train": ["train", "--config", path], "benchmark": ["benchmark", path, "--results", tmp_path / "r"],
            "search": ["search", "--space", path, "--num-trials", 1, "--out", tmp_path / "s"]}[command]
    line = _run(argv, capsys)
    assert name in line and "duplicate" in line.lower(), line
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
