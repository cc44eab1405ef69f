"""Suites: parsing, one-line errors, each method's configuration merged in one place."""
import json
from pathlib import Path

import pytest
import yaml

from anchoropt.benchmark import plan_cells
from anchoropt.config import ConfigError, make_config
from anchoropt.suite import load_suite, method_values
from tests.helpers import TINY, write_suite


def test_suite_errors_name_file_and_key(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, extra={"baselin": "coop"})
    with pytest.raises(ConfigError, match="suite.yaml: unknown suite key\\(s\\) baselin \\(did you mean baseline\\?\\)"):
        load_suite(path)
    path = write_suite(tmp_path, eurosat_root)
    with pytest.raises(ConfigError, match="^command-line overrides: unknown key\\(s\\) epoch \\(did you mean epochs\\?\\)"):
        load_suite(path, {"epoch": "3"})  # a typo on the command line is not the suite file's fault
    path = write_suite(tmp_path, eurosat_root, methods={"bad": {"method": "coop", "n_ctxx": 3}})
    with pytest.raises(ConfigError, match="method 'bad'.*unknown key\\(s\\) n_ctxx"):
        plan_cells(load_suite(path), tmp_path / "r")
    path = write_suite(tmp_path, eurosat_root, extra={"schedules": ["coop", "two"]})
    with pytest.raises(ConfigError, match="'schedules' is now schedule_methods"):
        load_suite(path)
    path = write_suite(tmp_path, eurosat_root, extra={"schedule_methods": {"one_stage": "two", "two_stage": "coop"}})
    with pytest.raises(ConfigError, match="schedule_methods one_stage: method 'two' has schedule two_stage"):
        load_suite(path)


def test_tuned_config_file_is_read_per_dataset_and_scored_on_test(tmp_path, eurosat_root):
    tuned = tmp_path / "searches" / "eurosat"
    tuned.mkdir(parents=True)
    (tuned / "best_config.yaml").write_text("n_anchors: 5\nlr: 0.01\nobjective: test\ndataset: other\n")
    (tuned / "search.json").write_text('{"objective": "val"}')  # the search that wrote it
    path = write_suite(tmp_path, eurosat_root, methods={"tuned": {"config": "searches/{dataset}/best_config.yaml",
                                                                   "epochs": 3}})
    values, tuning = method_values(load_suite(path), "tuned", "eurosat")
    assert (values["n_anchors"], values["lr"], values["epochs"]) == (5, 0.01, 3)
    assert values["dataset"] == "eurosat" and tuning == "search_val"
    (cell,) = [c for c in plan_cells(load_suite(path), tmp_path / "r") if c.seed == 1]
    assert cell.config["eval_split"] == "test" and cell.config["n_anchors"] == 5


def test_quick_search_config_sets_only_what_was_searched(tmp_path, eurosat_root):
    # a quick search's best config (1 shot, 1 epoch, RN50) searched over method, n_anchors and lr: the
    # suite's shots 4 / epochs 2 / TinyCLIP stay; only the searched keys come from the file
    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "best_config.yaml").write_text("n_anchors: 6\nlr: 0.02\nshots: 1\nepochs: 1\nbackbone: RN50\n"
                                            "method: anchoropt\n")
    (quick / "search.json").write_text(json.dumps({"objective": "val", "space": {"params": {
        "method": "anchoropt", "n_anchors": {"type": "int", "low": 1, "high": 8},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1}}}}))
    path = write_suite(tmp_path, eurosat_root, methods={"q": {"config": "quick/best_config.yaml"},
                                                        "q_epochs": {"config": "quick/best_config.yaml",
                                                                     "config_keys": ["epochs"]},
                                                        "q_all": {"config": "quick/best_config.yaml",
                                                                  "config_keys": "all"}})
    suite = load_suite(path)
    values, tuning = method_values(suite, "q", "eurosat")
    assert (values["n_anchors"], values["lr"], values["method"]) == (6, 0.02, "anchoropt") and tuning == "search_val"
    assert (values["shots"], values["epochs"], values["backbone"]) == (4, 2, TINY)  # the suite's, not the file's
    assert method_values(suite, "q_epochs", "eurosat")[0]["epochs"] == 1
    assert method_values(suite, "q_epochs", "eurosat")[0]["shots"] == 4
    assert method_values(suite, "q_all", "eurosat")[0]["shots"] == 1
    assert {c.config["shots"] for c in plan_cells(suite, tmp_path / "r") if c.method == "q"} == {4}
    bad = write_suite(tmp_path, eurosat_root, methods={"b": {"config": "quick/best_config.yaml", "config_keys": 3}},
                      name="bad.yaml")
    with pytest.raises(ConfigError, match="method 'b' config_keys must be a list of keys or 'all'"):
        method_values(load_suite(bad), "b", "eurosat")


# ------------------------------------------------------------------------------------------------
# issue 16, faults 1 and 2 (YAML errors, a method's config file under `run`) and duplicate keys (#18.8)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("name: s\ndatasets: [eurosat\nseeds: [1]\n", "line 3"),   # unclosed flow sequence
    ("name: s\n  datasets: x\n", "line 2"),                    # bad indentation
    ("methods:\n  coop: {method: coop}\n  coop: {method: anchoropt}\n", "duplicate key 'coop'"),
])
def test_broken_suite_is_one_line_exit_2_on_every_command(tmp_path, capsys, text, words):
    from anchoropt.cli import main

    path = tmp_path / "suite.yaml"
    path.write_text(text)
    for argv in (["benchmark", str(path), "--results", str(tmp_path / "r")],
                 ["run", "--suite", str(path), "--results", str(tmp_path / "r"), "--report", str(tmp_path / "p")],
                 ["search", "--space", str(path), "--num-trials", "1", "--out", str(tmp_path / "s")],
                 ["train", "--config", str(path)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, argv
        assert len(err.splitlines()) == 1 and str(path) in err and words in err, (argv, err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_duplicate_keys_are_refused_in_every_yaml_reader(tmp_path):
    from anchoropt.config import load_config
    from anchoropt.search.space import load_space

    path = tmp_path / "dup.yaml"
    path.write_text("params:\n  lr: {type: float, low: 0.001, high: 0.01}\n  lr: {type: float, low: 5, high: 1}\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_space(path)
    path.write_text("lr: 0.01\nepochs: 2\nlr: 0.1\n")
    with pytest.raises(ConfigError, match="dup.yaml: .*line 3.*duplicate key 'lr' \\(first at line 1\\)"):
        load_config(path)


def test_run_searches_with_the_method_config_file_merged(tmp_path, eurosat_root, monkeypatch):
    """`run` builds each search's base as `benchmark` builds the cells: the method's `config:` file
    merged, not passed on as an unknown key `config`."""
    import anchoropt.search.driver as driver
    from anchoropt import pipeline

    (tmp_path / "tuned.yaml").write_text("n_anchors: 3\nlr: 0.005\n")
    path = write_suite(tmp_path, eurosat_root, methods={
        "one": {"method": "anchoropt", "schedule": "one_stage", "config": "tuned.yaml"},
        "two": {"method": "anchoropt", "schedule": "two_stage", "config": "tuned.yaml"}},
        extra={"schedule_methods": {"one_stage": "one", "two_stage": "two"}})
    bases = []

    class Stop(Exception):
        pass

    def fake_searches(requests, **kw):  # the bases real searches would validate
        bases.extend(make_config(r["base"], source="base config") for r in requests)
        raise Stop

    monkeypatch.setattr(driver, "run_searches", fake_searches)
    with pytest.raises(Stop):
        pipeline.run_main_job(path, tmp_path / "res", tmp_path / "rep", search_trials=1, space=tmp_path / "s.yaml")
    assert sorted((b.n_anchors, b.lr, b.schedule) for b in bases) == [(3, 0.005, "one_stage"), (3, 0.005, "two_stage")]


# ------------------------------------------------------------------------------------------------
# issue 16, fault 3: relative paths in a suite are resolved before Ray workers see them
# ------------------------------------------------------------------------------------------------
def test_relative_paths_in_a_suite_reach_the_cells_absolute(tmp_path, eurosat_root, monkeypatch):
    import torch

    from anchoropt.backbone import create_backbone

    monkeypatch.chdir(tmp_path)
    torch.save(create_backbone("TinyCLIP-test", "").model.state_dict(), tmp_path / "tiny_copy.pt")
    suite_dir = tmp_path / "suites"
    suite_dir.mkdir()
    path = write_suite(suite_dir, eurosat_root, name="s.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["config"].update(pretrained="tiny_copy.pt", cache_dir="cache", data_root=str(eurosat_root))
    path.write_text(yaml.safe_dump(raw))
    cells = plan_cells(load_suite(path), "r")
    for cell in cells:
        assert cell.config["pretrained"] == str(tmp_path / "tiny_copy.pt")  # as `anchoropt train` reads it
        assert cell.config["cache_dir"] == str(tmp_path / "cache")
    monkeypatch.chdir(suite_dir)  # a Ray worker runs in another folder
    assert Path(cells[0].config["pretrained"]).is_file()


# ------------------------------------------------------------------------------------------------
# issue 11, item 5: a method's own per-dataset reference settings, and the pairs the report compares
# ------------------------------------------------------------------------------------------------
def test_method_per_dataset_order_reproduces_each_methods_reference(tmp_path, eurosat_root):
    (tmp_path / "given.yaml").write_text("lr: 0.03\nkd_weight: 7.0\n")  # a file that is no search's: all of it
    methods = {
        "plain": {"method": "anchoropt"},
        "own": {"method": "anchoropt", "n_anchors": 2,
                "per_dataset": {"eurosat": {"n_ctx": 6, "epochs": 3, "kd_weight": 5.0}}},
        "filed": {"method": "anchoropt", "config": "given.yaml", "epochs": 4,
                  "per_dataset": {"eurosat": {"n_ctx": 6, "lr": 0.01, "kd_weight": 5.0}}},
    }
    path = write_suite(tmp_path, eurosat_root, methods=methods,
                       extra={"per_dataset": {"eurosat": {"n_ctx": 8, "kd_weight": 100.0, "mse_weight": 10.0}}})
    suite = load_suite(path)
    plain, _ = method_values(suite, "plain", "eurosat")
    assert (plain["n_ctx"], plain["kd_weight"], plain["mse_weight"], plain["epochs"]) == (8, 100.0, 10.0, 2)
    own, tuning = method_values(suite, "own", "eurosat")  # the method's per_dataset replaces the suite's
    assert (own["n_ctx"], own["epochs"], own["kd_weight"], own["mse_weight"], own["n_anchors"]) == (6, 3, 5.0, 10.0, 2)
    assert tuning == "untuned" and "per_dataset" not in own
    filed, tuning = method_values(suite, "filed", "eurosat")  # the file beats per_dataset, the method's keys beat it
    assert (filed["n_ctx"], filed["lr"], filed["kd_weight"], filed["epochs"], tuning) == (6, 0.03, 7.0, 4, "given")
    cells = plan_cells(suite, tmp_path / "r")
    assert {c.config["n_ctx"] for c in cells if c.method == "own"} == {6}
    assert {c.config["n_ctx"] for c in cells if c.method == "plain"} == {8}


@pytest.mark.parametrize("spec, extra, words", [
    ({"method": "coop", "per_dataset": {"dtd": {"n_ctx": 2}}}, {},
     "method 'm' per_dataset entry 'dtd' is not a dataset the suite trains on \\(expected one of eurosat\\)"),
    ({"method": "coop", "per_dataset": {"eurosat": {"n_ctxx": 2}}}, {},
     "method 'm' per_dataset 'eurosat': unknown key\\(s\\) n_ctxx \\(did you mean n_ctx\\?\\)"),
    ({"method": "coop", "n_ctx": 4, "per_dataset": {"eurosat": {"n_ctx": 2}}}, {},
     "method 'm' per_dataset 'eurosat': n_ctx also set for every dataset by the method's own keys"),
    ({"method": "coop", "per_dataset": [1]}, {}, "methods.m.per_dataset: \\[1\\] is not of type 'object'"),
    ({"method": "coop"}, {"pairs": {"m": "nope"}}, "'nope' is not one of the suite's methods"),
    ({"method": "coop"}, {"pairs": {"m": "m"}}, "pairs: 'm' is paired with itself"),
    ({"method": "coop"}, {"pairs": ["m"]}, "pairs: \\['m'\\] is not of type 'object'"),
    ({"method": "coop"}, {"per_dataset": {"dtd": {}}}, ": per_dataset entry 'dtd' is not a dataset the suite trains on"),
])
def test_method_per_dataset_and_pairs_errors_are_one_line(tmp_path, eurosat_root, spec, extra, words):
    path = write_suite(tmp_path, eurosat_root, methods={"m": spec, "z": {"method": "zeroshot"}}, extra=extra)
    with pytest.raises(ConfigError, match=words) as err:
        load_suite(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_cross_dataset_per_dataset_entry_of_a_target_is_refused(tmp_path, eurosat_root):
    # a cross-dataset cell trains on the source only: an entry for a target would never apply
    path = write_suite(tmp_path, eurosat_root, methods={"m": {"method": "coop", "per_dataset": {"dtd": {"n_ctx": 2}}}},
                       extra={"protocol": "cross_dataset", "source": "eurosat", "datasets": ["dtd"]})
    with pytest.raises(ConfigError, match="entry 'dtd' is not a dataset the suite trains on \\(expected one of eurosat\\)"):
        load_suite(path)
    raw = yaml.safe_load(path.read_text())
    raw["methods"]["m"]["per_dataset"] = {"eurosat": {"n_ctx": 2}}
    path.write_text(yaml.safe_dump(raw))
    assert method_values(load_suite(path), "m", "eurosat")[0]["n_ctx"] == 2


def test_pairs_are_read(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, extra={"pairs": {"two": "coop"}})
    assert load_suite(path).pairs == {"two": "coop"}
    assert load_suite(write_suite(tmp_path, eurosat_root, name="b.yaml")).pairs is None
