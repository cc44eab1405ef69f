"""Searches you can trust (issue #13): the sampler as it ran, failed and stopped trials in the study,
resources checked before launch, storage recovery, bruteforce grids, importances, reproducibility,
enqueued configurations. Trials use an instant stand-in trainer (worker_setup), so these tests time
the search machinery, not training."""
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from anchoropt.config import ConfigError
from anchoropt.search.spec import SearchError, make_sampler, new_spec

ROOT = Path(__file__).resolve().parents[2]
SPACE = {"params": {"n_anchors": {"type": "categorical", "choices": [1, 2, 3]},
                    "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}}}
GRID = {"params": {"n_anchors": {"type": "categorical", "choices": [1, 2]}, "kd_weight": 1.0}}


def _base(tiny_cfg, **kw):
    return tiny_cfg(**{"epochs": 4, "anchor_epochs": 1, "train_views": 1, "shots": 4, **kw}).to_dict()


def _stand_in(kind: str, log: str = ""):
    """A worker_setup replacing ``anchoropt.train.train`` by an instant trainer reporting every epoch.

    kinds: ``constant`` (HM 50), ``nan_missing`` (n_anchors 2: HM NaN; 3: a report without HM;
    else HM 40 + 100 lr), ``decreasing`` (the k-th trial started, counted in ``log``, reports
    HM 90 - 5k + epoch, so every later trial is worse than the first at each epoch)."""
    def setup():
        import anchoropt.train as training

        def train(cfg, out_dir=None, report=None):
            order = 0
            if kind == "decreasing":
                with open(log, "a+") as fh:
                    fh.seek(0)
                    order = len(fh.read().splitlines())
                    fh.write("x\n")
            metrics = {}
            for epoch in range(1, cfg.epochs + 1):
                hm = {"constant": 50.0, "decreasing": 90.0 - 5 * order + epoch}.get(kind, 40.0 + 100 * cfg.lr)
                if kind == "nan_missing" and cfg.n_anchors == 2:
                    hm = float("nan")
                metrics = {"hm": hm, "acc_base": hm, "acc_novel": hm}
                if kind == "nan_missing" and cfg.n_anchors == 3:
                    metrics = {"acc_base": 50.0, "acc_novel": 50.0}
                report({"epoch": epoch, "loss": 0.1, **metrics})
            return {"metrics": metrics}
        training.train = train
    return setup


def _study(out: Path):
    meta = json.loads((out / "search.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=meta["study_name"], storage=storage)


# ------------------------------------------------------------------------------------------------
# fault 1: TPE's random start-up sized to the budget and recorded
# ------------------------------------------------------------------------------------------------
def test_tpe_startup_is_sized_to_the_budget_and_said(tiny_cfg, tmp_path):
    spec = new_spec(SPACE, tmp_path / "s", 8, _base(tiny_cfg), objective="val", sampler="tpe", seed=0,
                    scheduler="none", cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, storage=None)
    k = spec.sampler_options["n_startup_trials"]
    assert 1 <= k < 8
    assert f"first {k} of 8 trials random" in spec.sampler_description
    spec.write(tmp_path)
    assert json.loads((tmp_path / "search.json").read_text())["sampler_options"] == {"n_startup_trials": k}
    # the sampler the search builds is random for exactly k trials, then TPE's own
    space = optuna.distributions.FloatDistribution(0.0, 1.0)
    drawn = {}
    for name, sampler in (("tpe", make_sampler("tpe", 3, spec.sampler_options)),
                          ("random", optuna.samplers.RandomSampler(seed=3))):
        study = optuna.create_study(sampler=sampler, direction="maximize")
        for _ in range(8):
            t = study.ask({"x": space})
            study.tell(t, -abs(t.params["x"] - 0.3))
        drawn[name] = [t.params["x"] for t in study.trials]
    assert drawn["tpe"][:k] == drawn["random"][:k] and drawn["tpe"][k:] != drawn["random"][k:]
    tiny = new_spec(SPACE, tmp_path / "t", 1, _base(tiny_cfg), objective="val", sampler="tpe", seed=0,
                    scheduler="none", cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, storage=None)
    assert "all 1 trials random" in tiny.sampler_description


# ------------------------------------------------------------------------------------------------
# fault 2: NaN and metric-less trials FAIL, ASHA-stopped trials are PRUNED with intermediate values
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_nan_and_metricless_trials_fail_and_are_never_best(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    out = tmp_path / "s"
    result = run_search({"params": {"n_anchors": {"type": "categorical", "choices": [1, 2, 3]}}}, out, 3,
                        _base(tiny_cfg), sampler="bruteforce", max_concurrent=2,
                        worker_setup=_stand_in("nan_missing"))
    states = {t.params["n_anchors"]: t.state.name for t in _study(out).trials}
    assert states == {1: "COMPLETE", 2: "FAIL", 3: "FAIL"}
    assert _study(out).best_trial.params["n_anchors"] == 1 and result.best_params["n_anchors"] == 1
    table = pd.read_csv(out / "trials.csv").set_index("n_anchors")
    assert table.loc[2, "status"] == "failed" and "non-finite hm" in table.loc[2, "error"]
    assert table.loc[3, "status"] == "failed" and "no 'hm'" in table.loc[3, "error"]
    assert table["hm"].isna().sum() == 2


@pytest.mark.ray
def test_asha_stopped_trials_are_pruned_with_their_intermediate_values(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    out = tmp_path / "s"
    result = run_search(SPACE, out, 4, _base(tiny_cfg), sampler="random", scheduler="asha", max_concurrent=1,
                        worker_setup=_stand_in("decreasing", str(tmp_path / "order.log")))
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    assert trials[0].intermediate_values == {1: 91.0, 2: 92.0, 3: 93.0, 4: 94.0}
    for k, t in enumerate(trials[1:], start=1):
        # the first rung comes after the 1-epoch warm-up (driver.asha_rungs)
        assert t.intermediate_values == {1: 91.0 - 5 * k, 2: 92.0 - 5 * k} and t.value == 92.0 - 5 * k
    table = pd.read_csv(out / "trials.csv")
    assert list(table["status"]) == ["complete", "stopped", "stopped", "stopped"]
    assert list(table["epochs_done"]) == [4, 2, 2, 2]
    assert result.n_stopped == 3 and result.best_trial == 0
    # fault 7 at concurrency 1: the seed pins the search, and every output says what the sampler was
    assert "draws the same trials" in json.loads((out / "search.json").read_text())["reproducibility"]


# ------------------------------------------------------------------------------------------------
# fault 3: resources checked before launch; a resume refuses a changed request
# ------------------------------------------------------------------------------------------------
def _cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anchoropt.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.ray
def test_requests_the_cluster_cannot_meet_exit_2_before_launch(ray_session, tiny_cfg, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_base(tiny_cfg)))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = tmp_path / "s"
    for flags, asked in ((["--cpus-per-trial", "8"], "8 CPU"), (["--gpus-per-trial", "2"], "2 GPU")):
        run = _cli(["search", "--space", str(space), "--num-trials", "2", "--out", str(out), "--config", str(base),
                    "--address", address, *flags])
        assert run.returncode == 2, run.stderr[-2000:]
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("anchoropt: error")]
        assert len(errors) == 1 and asked in errors[0] and "2 CPU and 0 GPU" in errors[0], run.stderr[-2000:]
        assert not out.exists()
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"datasets": ["eurosat"], "seeds": [1], "config": _base(tiny_cfg),
                                     "methods": {"coop": {"method": "coop"}}}))
    run = _cli(["benchmark", str(suite), "--results", str(tmp_path / "cells"), "--address", address,
                "--cpus-per-trial", "3"])
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("anchoropt: error")]
    assert run.returncode == 2 and len(errors) == 1 and "3 CPU" in errors[0], run.stderr[-2000:]
    assert not list((tmp_path / "cells").rglob("seed*.json"))  # no cell ran


def test_resume_refuses_a_changed_resource_request(tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    spec = new_spec(SPACE, tmp_path, 2, _base(tiny_cfg), objective="val", sampler="random", seed=0,
                    scheduler="none", cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, storage=None)
    spec.write(tmp_path)
    with pytest.raises(SearchError, match="--gpus-per-trial 1 differs from the 0"):
        run_search(resume=tmp_path, gpus_per_trial=1)
    with pytest.raises(SearchError, match="--cpus-per-trial 2 differs from the 1"):
        run_search(resume=tmp_path, cpus_per_trial=2)


# ------------------------------------------------------------------------------------------------
# fault 4: torn or lost study storage; non-persistent storage refused
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_torn_or_lost_study_is_recovered_from_the_ledger(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search
    from anchoropt.search.ledger import read_results

    out = tmp_path / "s"
    setup = _stand_in("constant")
    run_search(SPACE, out, 2, _base(tiny_cfg), sampler="random", max_concurrent=1, worker_setup=setup)
    journal = out / "study.journal"
    last = journal.read_bytes().splitlines()[-1]
    with open(journal, "ab") as fh:  # a record cut by kill -9
        fh.write(last[: len(last) // 2])
    for total in (3, 4):  # the second resume is the one the torn record used to break
        result = run_search(resume=out, num_trials=total, worker_setup=setup)
        assert result.n_done == total and sorted(result.trials["trial"]) == list(range(total))
    assert (out / "study.journal.torn").is_file()
    first = {r["trial"]: r for r in read_results(out)}
    journal.unlink()  # the study is lost, the ledger survives
    result = run_search(resume=out, num_trials=6, worker_setup=setup)
    assert sorted(result.trials["trial"]) == list(range(6))
    for number, row in first.items():  # the first runs' trials are still there, unchanged
        assert result.trials.set_index("trial").loc[number, "tune_trial_id"] == row["tune_trial_id"]
    study = _study(out)
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.user_attrs.get("rebuilt_from_ledger") for t in study.trials[:4])
    assert "rebuilt 4 trials from results.jsonl" in json.dumps(json.loads((out / "search.json").read_text())["runs"])
    # a study that is not this ledger's is refused in one line, before any trial runs
    journal.unlink()
    other = optuna.create_study(study_name=study.study_name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    other.add_trial(optuna.trial.create_trial(value=1.0))
    with pytest.raises(SearchError, match="holds 1 trials but results.jsonl records trial 5"):
        run_search(resume=out, num_trials=7)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_storage_is_refused(tiny_cfg, tmp_path, url):
    from anchoropt.search.driver import run_search

    with pytest.raises(SearchError, match="in memory"):
        run_search(SPACE, tmp_path / "s", 2, _base(tiny_cfg), storage=url)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------
# fault 5: bruteforce validated before Ray, stopped at the grid size; fault 6: no made-up importances
# ------------------------------------------------------------------------------------------------
def test_bruteforce_on_a_continuous_space_fails_before_ray(tiny_cfg, tmp_path, monkeypatch):
    import anchoropt.raytools
    from anchoropt.search.driver import run_search

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a search that cannot run")
    monkeypatch.setattr(anchoropt.raytools, "ensure_ray", no_ray)
    with pytest.raises(SearchError, match="lr: sampler bruteforce needs a finite grid"):
        run_search(SPACE, tmp_path / "s", 4, _base(tiny_cfg), sampler="bruteforce")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_bruteforce_stops_at_its_grid_and_constant_objective_has_no_importances(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    out = tmp_path / "s"
    result = run_search(GRID, out, 5, _base(tiny_cfg), sampler="bruteforce", max_concurrent=2,
                        worker_setup=_stand_in("constant"))
    assert result.num_trials == 2 and result.n_done == 2
    assert sorted(result.trials["n_anchors"]) == [1, 2]
    assert any("grid has 2 points" in n for n in result.notes)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["importances"] is None and "never varied" in summary["importances_note"]
    assert not (out / "importances.csv").exists()
    # fault 7 at concurrency 2: every output says the seed does not pin the result
    header = (out / "best_config.yaml").read_text()
    for text in (json.loads((out / "search.json").read_text())["reproducibility"], summary["reproducibility"],
                 header):
        assert "not reproducible from seed 0" in text
    assert "# sampler bruteforce" in header
    with pytest.raises(SearchError, match="grid .* has only 2 points"):
        run_search(resume=out, num_trials=3)


# ------------------------------------------------------------------------------------------------
# fault 8: the default config is trial 0; --enqueue adds known configurations
# ------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_default_config_is_trial_0_then_enqueued_files(ray_session, tiny_cfg, tmp_path):
    from anchoropt.cli import main
    from anchoropt.search.driver import run_search

    known = tmp_path / "known.yaml"
    known.write_text("- {n_anchors: 3, lr: 0.02}\n- {n_anchors: 2}\n")
    out = tmp_path / "s"
    result = run_search(SPACE, out, 4, _base(tiny_cfg, n_anchors=2, lr=0.004), sampler="tpe", max_concurrent=1,
                        enqueue=[known], worker_setup=_stand_in("constant"))
    table = result.trials.set_index("trial")
    assert table.loc[0, ["n_anchors", "lr", "origin"]].tolist() == [2, 0.004, "default config"]
    assert table.loc[1, ["n_anchors", "lr", "origin"]].tolist() == [3, 0.02, "enqueued from known.yaml #1"]
    assert table.loc[2, "n_anchors"] == 2 and table.loc[2, "origin"] == "enqueued from known.yaml #2"
    assert table.loc[3, "origin"].startswith("TPESampler")
    bad = tmp_path / "bad.yaml"
    bad.write_text("{n_anchors: 2, n_ctx: 8}\n")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_base(tiny_cfg)))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--space", str(space), "--num-trials", "2", "--out", str(tmp_path / "b"), "--config",
              str(base), "--enqueue", str(bad)])
    assert exit_.value.code == 2 and not (tmp_path / "b").exists()


def test_default_outside_the_space_is_said_not_enqueued(tiny_cfg, tmp_path):
    spec = new_spec({"params": {"n_anchors": {"type": "int", "low": 2, "high": 4}}}, tmp_path, 3, _base(tiny_cfg),
                    objective="val", sampler="random", seed=0, scheduler="none", cpus_per_trial=1, gpus_per_trial=0,
                    max_concurrent=1, storage=None)
    assert spec.enqueued == [] and "n_anchors=1 lies outside the space" in spec.notes[0]
    with pytest.raises(ConfigError):
        new_spec(SPACE, tmp_path, 3, _base(tiny_cfg), objective="val", sampler="random", seed=0, scheduler="none",
                 cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1, storage=None, enqueue=[tmp_path / "none.yaml"])
