"""Declarative search spaces: shipped spaces, conditionals, one-line errors naming file and key."""
import optuna
import pytest
import yaml

from anchoropt.cli import main
from anchoropt.config import make_config
from anchoropt.search.space import SpaceError, load_space, parse_space
from tests.helpers import REPO_ROOT, TINY_SPACE

SPACES = REPO_ROOT / "search_spaces"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", ["anchors", "schedule", "full"])
def test_shipped_spaces_give_valid_configs_and_respect_conditions(name):
    space = load_space(SPACES / f"{name}.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen_schedules = set()
    for i in range(150):
        trial = study.ask()
        values = space.define_by_run(trial)
        cfg = make_config(values, source=name)  # every draw is a valid TrainConfig
        study.tell(trial, float(i % 7))
        assert set(values) <= {p.name for p in space.params}
        if "schedule" in values:
            seen_schedules.add(values["schedule"])
            assert ("period" in values) == (values["schedule"] == "one_stage")
            if name in ("schedule", "full"):
                assert ("anchor_epochs" in values) == (values["schedule"] == "two_stage")
        if "n_anchors" in values:
            assert 1 <= cfg.n_anchors <= 8
        if "kd_weight" in values:
            assert 0 <= cfg.kd_weight <= 1000
    if name != "anchors":
        assert seen_schedules == {"one_stage", "two_stage"}
    full = load_space(SPACES / "full.yaml")
    assert {"n_ctx", "n_anchors", "lr", "anchor_lr", "epochs", "anchor_epochs", "ce_weight", "kd_weight",
            "kd_temperature", "mse_weight", "gumbel_tau", "schedule", "period"} <= set(full.names)


def test_space_conditionals_under_tpe():
    params = TINY_SPACE["params"]
    space = parse_space({"params": {"period": params["period"], **params}})  # a condition may come first
    assert space.names.index("period") > space.names.index("schedule")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5), direction="maximize")
    for i in range(30):
        trial = study.ask()
        values = space.define_by_run(trial)
        make_config(values)
        assert ("period" in values) == (values["schedule"] == "one_stage")
        study.tell(trial, values["lr"] * (2 if values["schedule"] == "one_stage" else 1))


@pytest.mark.parametrize("spec, key, words", [
    ({"not_a_field": {"type": "int", "low": 1, "high": 2}}, "not_a_field", "unknown parameter"),
    ({"n_anchors": {"type": "int", "low": 4, "high": 4}}, "n_anchors", "low"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "lr", "low"),
    ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "lr", "log"),
    ({"kd_weight": {"type": "categorical", "choices": []}}, "kd_weight", "choices"),
    ({"n_ctx": {"type": "uniform", "low": 1, "high": 4}}, "n_ctx", "unknown type"),
    ({"n_ctx": {"type": "int", "low": 1.5, "high": 4}}, "n_ctx", "integer"),
    ({"schedule": {"type": "categorical", "choices": ["one_stage", "three_stage"]}}, "schedule", "three_stage"),
    ({"period": {"type": "int", "low": 1, "high": 4, "when": {"schedule": "one_stage"}}}, "period", "schedule"),
    ({"eval_split": {"type": "categorical", "choices": ["val", "test"]}}, "eval_split", "--objective"),
    ({"lr": {"type": "float", "low": 0.01, "hi": 0.1}}, "lr", "hi"),
])
def test_bad_space_files_name_file_and_key(tmp_path, spec, key, words):
    path = tmp_path / "bad_space.yaml"
    path.write_text(yaml.safe_dump({"params": {"n_anchors": {"type": "int", "low": 1, "high": 3}, **spec}}
                                   if key != "n_anchors" else {"params": spec}))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and words in msg, msg


def test_bad_space_errors_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  lr: {type: float, low: 0, high: 0.1, log: true}\n")
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--space", str(path), "--num-trials", "2", "--out", str(tmp_path / "s")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "lr" in err and "log" in err


