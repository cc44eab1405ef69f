"""Search driver: the Optuna + Ray Tune loop, resume after kill -9, failures, Stage I sharing."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from anchoropt.cli import main
from anchoropt.config import load_config
from anchoropt.search.space import SpaceError
from tests.helpers import REPO_ROOT, TINY_SPACE, search_base as _base

optuna.logging.set_verbosity(optuna.logging.WARNING)




def _stage1_spy(log_path: str):
    """A worker_setup that appends one line to ``log_path`` every time Stage I is really trained."""
    def setup():
        import anchoropt.train as training
        if getattr(training.Trainer.run_loop, "_spied", False):
            return
        original = training.Trainer.run_loop

        def run_loop(self, phase, *args, **kwargs):
            if phase == "stage1":
                with open(log_path, "a") as fh:
                    fh.write(f"{os.getpid()}\n")
            return original(self, phase, *args, **kwargs)
        run_loop._spied = True
        training.Trainer.run_loop = run_loop
    return setup


def _stage1_key(row: pd.Series, base: dict) -> tuple:
    return (row.get("n_anchors", base["n_anchors"]), row.get("anchor_lr", base["anchor_lr"]))


def test_search_fails_fast_on_bad_input(tiny_cfg, tmp_path):
    from anchoropt.data import DataError
    from anchoropt.search.driver import run_search
    from anchoropt.search.spec import SearchError

    with pytest.raises(DataError, match="dtd"):  # the dataset is checked before any trial starts
        run_search(TINY_SPACE, tmp_path / "a", 2, _base(tiny_cfg, dataset="dtd"))
    with pytest.raises(SpaceError, match="zero-shot"):
        run_search({"params": {"method": "zeroshot"}}, tmp_path / "b", 2, _base(tiny_cfg))
    with pytest.raises(SearchError, match="sampler"):
        run_search(TINY_SPACE, tmp_path / "c", 2, _base(tiny_cfg), sampler="anneal")
    with pytest.raises(SearchError, match="not a search folder"):
        run_search(resume=tmp_path)
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------------
# searches (Ray)
# ------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_search_runs_and_writes_every_output(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    base = _base(tiny_cfg)
    spy = tmp_path / "stage1.log"
    out = tmp_path / "search"
    result = run_search(TINY_SPACE, out, 6, base, max_concurrent=2, seed=3, worker_setup=_stage1_spy(str(spy)))
    assert (result.n_complete, result.n_failed, result.num_trials) == (6, 0, 6)
    for name in ("trials.csv", "trials.parquet", "best_config.yaml", "importances.png", "history.png",
                 "hm_vs_anchors.png", "summary.json", "search.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["trial"]) == list(range(6))
    assert {"trial", "status", "hm", "acc_base", "acc_novel", "error", "wall_time_s", "objective", "n_anchors",
            "lr", "schedule", "period"} <= set(table.columns)
    assert (table["objective"] == "val").all() and (table["status"] == "complete").all()
    assert table["hm"].between(0, 100).all() and table["wall_time_s"].gt(0).all()
    # conditional parameter only where its condition holds
    assert (table["period"].notna() == (table["schedule"] == "one_stage")).all()
    assert len(pd.read_parquet(out / "trials.parquet")) == 6
    summary = json.loads((out / "summary.json").read_text())
    if summary["importances"] is None:  # the tiny task's HM may not vary: then no table, and why
        assert "no parameter importances" in summary["importances_note"] and not (out / "importances.csv").exists()
    else:
        assert list(pd.read_csv(out / "importances.csv").columns) == ["param", "importance"]
    # best config: only TrainConfig keys, objective provenance, accepted by `anchoropt train` unchanged
    text = (out / "best_config.yaml").read_text()
    assert "# objective: val" in text
    best = load_config(out / "best_config.yaml")
    assert best.eval_split == "test" and best.cache_dir == base["cache_dir"]  # scored on test by default
    assert best.n_anchors == result.best_config["n_anchors"]
    assert result.best_hm == pytest.approx(table["hm"].max())
    # one shared cache: features once, Stage I once per distinct Stage I configuration
    two_stage = table[table["schedule"] == "two_stage"]
    keys = {_stage1_key(r, base) for _, r in two_stage.iterrows()}
    computed = spy.read_text().splitlines() if spy.exists() else []
    assert len(computed) == len(keys)
    assert len(list((Path(base["cache_dir"]) / "stage1").glob("*.pt"))) == len(keys)
    # one feature set per split (train views, base eval, novel eval), shared by all six trials
    assert len(list((Path(base["cache_dir"]) / "features").glob("*.pt"))) == 3
    assert "6/6 trials done (6 complete, 0 failed)" in result.summary()
    # (after the cache checks: scored on test, this run trains Stage I on the full base classes)
    main(["train", "--config", str(out / "best_config.yaml"), "--out", str(tmp_path / "train"), "epochs=1"])
    assert (tmp_path / "train" / "record.json").is_file()


@pytest.mark.ray
def test_stage1_computed_once_for_trials_sharing_it(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    base = _base(tiny_cfg, anchor_epochs=6, n_anchors=2)
    spy = tmp_path / "stage1.log"
    space = {"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                        "kd_weight": {"type": "float", "low": 0.0, "high": 10.0}}}  # Stage II only
    result = run_search(space, tmp_path / "s", 4, base, max_concurrent=2, objective="test",
                        worker_setup=_stage1_spy(str(spy)))
    assert result.n_complete == 4
    assert len(spy.read_text().splitlines()) == 1
    assert len(list((Path(base["cache_dir"]) / "stage1").glob("*.pt"))) == 1
    assert (result.trials["objective"] == "test").all()
    assert "# objective: test" in (tmp_path / "s" / "best_config.yaml").read_text()


@pytest.mark.ray
def test_failed_trials_are_recorded_and_the_search_goes_on(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    space = {"params": {"n_anchors": {"type": "categorical", "choices": [1, 2, 3]},
                        # a weight that overflows float32 -> non-finite Stage I loss -> NonFiniteLoss with two anchors
                        "mse_weight": {"type": "fixed", "value": 1e300, "when": {"n_anchors": 2}}}}
    out = tmp_path / "s"
    result = run_search(space, out, 3, _base(tiny_cfg), sampler="bruteforce", max_concurrent=2)
    assert (result.n_complete, result.n_failed) == (2, 1)
    table = pd.read_csv(out / "trials.csv")
    failed = table[table["status"] == "failed"].iloc[0]
    assert failed["n_anchors"] == 2 and "NonFiniteLoss" in failed["error"] and "stage1" in failed["error"]
    assert math.isnan(failed["hm"])
    assert result.best_trial is not None and result.best_params["n_anchors"] != 2
    assert "1 failed" in result.summary()
    study = optuna.load_study(study_name=json.loads((out / "search.json").read_text())["study_name"],
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]


@pytest.mark.ray
def test_killed_search_resumes_without_lost_or_repeated_trials(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search
    from anchoropt.search.ledger import read_results

    base_yaml = tmp_path / "base.yaml"
    base_yaml.write_text(yaml.safe_dump(_base(tiny_cfg, epochs=30)))  # trials long enough to be killed mid-search
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    out = tmp_path / "search"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "anchoropt.cli", "search", "--space", str(space), "--num-trials", "6",
           "--out", str(out), "--config", str(base_yaml), "--max-concurrent", "1", "--address", address,
           "--sampler", "random"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    try:
        while len(read_results(out)) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the search did not finish 2 trials in time"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {r["trial"]: r for r in read_results(out)}
    assert 2 <= len(before) < 6
    result = run_search(resume=out)
    after = read_results(out)
    assert [r["trial"] for r in after] == sorted({r["trial"] for r in after})  # one row per trial
    assert result.n_done == 6 and result.n_failed == 0 and len(result.trials) == 6
    lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]
    assert len(lines) == 6  # nothing ran twice
    for number, row in before.items():  # completed trials kept as they were
        kept = next(r for r in after if r["trial"] == number)
        assert kept["tune_trial_id"] == row["tune_trial_id"] and kept["hm"] == row["hm"] and kept["run"] == 0
    meta = json.loads((out / "search.json").read_text())
    assert len(meta["runs"]) == 2 and meta["runs"][1]["trials_before"] == len(before)
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 6 and table["trial"].is_unique
    # a trial in flight at the kill is marked interrupted in the study and re-run with its parameters
    study = optuna.load_study(study_name=meta["study_name"], storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    interrupted = {t.number: t.params for t in study.trials if t.user_attrs.get("interrupted")}
    retries = [t for t in study.trials if "retry_of" in t.user_attrs]
    assert len(retries) == len(interrupted) <= 1
    for t in retries:  # (a kill while the driver drew the parameters leaves only the first ones drawn)
        assert interrupted[t.user_attrs["retry_of"]].items() <= t.params.items() and t.state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 6
    assert not set(interrupted) & set(table["trial"])


def _pid_log(log_path: str):
    """A worker_setup that appends the worker's PID to ``log_path`` at the start of every trial."""
    def setup():
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    return setup


@pytest.mark.ray
def test_searches_sharing_a_tune_run_draw_their_own_trials_in_warm_workers(ray_session, tiny_cfg, tmp_path):
    """Three searches in one run_searches call (one Tune run) draw, trial by trial, what each draws
    alone, and every trial of every search runs in the same worker process (actors reused across
    searches: imports and backbone loaded once)."""
    from anchoropt.search.driver import run_search, run_searches

    space = {"params": {k: TINY_SPACE["params"][k] for k in ("n_anchors", "lr")}}
    bases = [_base(tiny_cfg, epochs=1), _base(tiny_cfg, epochs=1, shots=2), _base(tiny_cfg, epochs=1)]
    alone = [run_search(space, tmp_path / f"alone{k}", 3, base, seed=k, max_concurrent=1)
             for k, base in enumerate(bases)]
    pids = tmp_path / "pids.log"
    shared = run_searches([dict(space=space, out=tmp_path / f"shared{k}", num_trials=3, base=base, seed=k,
                                max_concurrent=1) for k, base in enumerate(bases)],
                          worker_setup=_pid_log(str(pids)))
    for one, both in zip(alone, shared):
        assert (both.n_complete, both.num_trials) == (3, 3)
        assert one.trials[["n_anchors", "lr"]].equals(both.trials[["n_anchors", "lr"]])
        runs = json.loads((both.out_dir / "search.json").read_text())["runs"]
        assert len(runs) == 1 and runs[0]["finished"] and runs[0]["trials_asked"] == 3
    assert len(pids.read_text().split()) == 9 and len(set(pids.read_text().split())) == 1
    assert (shared[0].out_dir / "ray" / "run-0").is_dir()  # Tune's own folders: under the first search
    # a search's outputs are written the moment its last trial ends, while the later searches' trials run
    from anchoropt.search.ledger import read_results
    written = (shared[0].out_dir / "summary.json").stat().st_mtime
    assert written < min(r["started_at"] for r in read_results(shared[2].out_dir))
    for k in range(3):  # each search's TensorBoard runs in its own folder, its trials only
        assert sorted(p.name for p in (tmp_path / f"shared{k}" / "tensorboard").iterdir()) == \
            ["trial-0000", "trial-0001", "trial-0002"]


def test_only_searches_without_a_scheduler_and_with_equal_resources_share_a_tune_run():
    """ASHA compares the trials reaching a rung: a search's trials must never be cut against another
    dataset's, so an ASHA search runs alone; different resources or concurrency cannot share actors."""
    from types import SimpleNamespace

    from anchoropt.search.driver import Search, _shared_runs

    def search(name, scheduler="none", cpus=1.0, concurrent=None):
        spec = SimpleNamespace(scheduler=scheduler, cpus_per_trial=cpus, gpus_per_trial=0.0, max_concurrent=concurrent)
        return Search(Path(name), spec)

    found = _shared_runs([search("a"), search("b", "asha"), search("c"), search("d", "asha"), search("e", cpus=2),
                          search("f", concurrent=1), search("g")])
    assert [[s.out_dir.name for s in group] for group in found] == [["a", "c", "g"], ["b"], ["d"], ["e"], ["f"]]
