"""A search never claims what it did not do: a trial lost with its actor is re-run (not failed), Ctrl-C
stops with exit 130, a search with no completed trial exits non-zero, and ``anchoropt run`` refuses
to resume a search made for another request."""
import json
import subprocess
import sys
import time

import pytest
import yaml

from anchoropt.search.spec import SearchError, new_spec
from tests.helpers import interrupt, one_trial_actor_killed, search_base as _base

COOP_SPACE = {"params": {"method": "coop", "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}


@pytest.mark.ray
def test_trial_whose_actor_dies_is_rerun_not_failed(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search

    out = tmp_path / "s"
    with one_trial_actor_killed() as killed:  # the trial trains for 200 epochs: killed mid-trial
        result = run_search(COOP_SPACE, out, 2, _base(tiny_cfg, epochs=200), sampler="random", max_concurrent=1)
    assert killed
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lost = [r for r in lines if r["status"] == "lost"]
    assert len(lost) == 1 and "actor" in lost[0]["error"].lower()
    assert [r["trial"] for r in lines if r["status"] == "requeued"] == [lost[0]["trial"]]
    assert (result.n_complete, result.n_failed, result.num_trials) == (2, 0, 2)
    finished = [r for r in lines if r["status"] == "complete"]
    assert len({r["trial"] for r in finished}) == 2 and any(r["params"] == lost[0]["params"] for r in finished)
    assert "2 of 2 trials done" in (out / "best_config.yaml").read_text()


def _cli_search(tmp_path, tiny_cfg, space, n, **kw):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    overrides = [f"{k}={v}" for k, v in _base(tiny_cfg, **kw).items() if v is not None and k != "eval_split"]
    return [sys.executable, "-m", "anchoropt.cli", "search", "--space", str(path), "--num-trials", str(n),
            "--out", str(tmp_path / "s"), "--sampler", "random", "--max-concurrent", "1", *overrides]


@pytest.mark.ray
def test_search_where_every_trial_failed_exits_non_zero(tiny_cfg, tmp_path):
    space = {"params": {"method": "anchoropt", "n_anchors": 1,
                        "mse_weight": {"type": "fixed", "value": 1e300}}}  # overflows: NonFiniteLoss in Stage I
    done = subprocess.run(_cli_search(tmp_path, tiny_cfg, space, 1), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no trial of the search completed (1 failed)" in done.stderr.strip().splitlines()[-1]


@pytest.mark.ray
def test_ctrl_c_stops_a_search_with_exit_130_and_says_how_to_resume(tiny_cfg, tmp_path):
    cmd = _cli_search(tmp_path, tiny_cfg, COOP_SPACE, 4, epochs=80)  # mid-search when Ctrl-C comes, not in teardown
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ledger = tmp_path / "s" / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (ledger.is_file() and ledger.read_text().strip()):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    err = interrupt(proc)
    assert proc.returncode == 130, err[-2000:]
    said = [line for line in err.splitlines() if "anchoropt: interrupted" in line]  # after the progress bar
    assert len(said) == 1 and f"resume with `anchoropt search --resume {tmp_path / 's'}`" in said[0], err[-2000:]
    assert "Traceback" not in err
    best = tmp_path / "s" / "best_config.yaml"
    assert not best.exists() or "4 of 4 trials done" not in best.read_text()


def test_run_refuses_to_resume_a_search_made_for_another_request(tiny_cfg, tmp_path):
    from anchoropt.pipeline import _same_search

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(COOP_SPACE))
    base = {k: v for k, v in _base(tiny_cfg).items() if k != "eval_split"}
    out = tmp_path / "s"
    out.mkdir()
    new_spec(space, out, 4, base, objective="val", sampler="tpe", seed=0, scheduler="none", cpus_per_trial=1,
             gpus_per_trial=0, max_concurrent=None, storage=None).write(out)
    assert _same_search(out, space, 4, base, "val", "none") == 4
    assert _same_search(out, space, 6, base, "val", "none") == 6  # a larger budget extends the search, saying so
    with pytest.raises(SearchError, match="4 trials -> 2"):
        _same_search(out, space, 2, base, "val", "none")
    with pytest.raises(SearchError, match="epochs 2 -> 3"):
        _same_search(out, space, 4, {**base, "epochs": 3}, "val", "none")
    with pytest.raises(SearchError, match="objective 'val' -> 'test'"):
        _same_search(out, space, 4, base, "test", "none")
    wider = tmp_path / "wider.yaml"
    wider.write_text(yaml.safe_dump({"params": {**COOP_SPACE["params"], "n_ctx": {"type": "int", "low": 2,
                                                                                    "high": 8}}}))
    with pytest.raises(SearchError, match="space .*other parameters or ranges"):
        _same_search(out, wider, 4, base, "val", "none")


@pytest.mark.ray
def test_ctrl_c_stops_the_main_job_before_the_next_step(tmp_path, eurosat_root):
    from tests.helpers import write_suite

    suite = write_suite(tmp_path, eurosat_root, seeds=(1,), methods={
        "one": {"method": "anchoropt", "schedule": "one_stage", "epochs": 80},
        "two": {"method": "anchoropt", "schedule": "two_stage", "epochs": 80}},
        extra={"schedule_methods": {"one_stage": "one", "two_stage": "two"}})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}))
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "anchoropt.cli", "run", "--suite", str(suite), "--results",
                             str(results), "--report", str(tmp_path / "report"), "--space", str(space),
                             "--search-trials", "3", "--max-concurrent", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(results.glob("searches/*/*/results.jsonl")):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    err = interrupt(proc)
    assert proc.returncode == 130, err[-2000:]
    assert any("anchoropt: interrupted" in line and "run the same command again" in line for line in err.splitlines())
    # both searches share one Tune run: the second one's trials come after the first one's, so none has run
    assert len(list(results.glob("searches/*/*/search.json"))) == 2
    assert len(list(results.glob("searches/*/*/results.jsonl"))) == 1
    assert not (results / "cells").exists() and not (tmp_path / "report").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_and_resumed_search_draws_the_trials_of_an_uninterrupted_one(tiny_cfg, tmp_path):
    """At --max-concurrent 1 a seeded search stopped after two trials and resumed runs the same
    parameters, in the same order, as one that was never stopped (issue 28: not a stream re-seeded per run)."""
    import pandas as pd

    def drawn(folder):
        table = pd.read_csv(folder / "trials.csv").sort_values("trial")
        return [round(v, 12) for v in table["lr"]]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    done = subprocess.run(_cli_search(whole, tiny_cfg, COOP_SPACE, 4), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    # 120-epoch trials: Ctrl-C lands in the third trial, not after a fast search already finished
    proc = subprocess.Popen(_cli_search(cut, tiny_cfg, COOP_SPACE, 4, epochs=120), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ledger = cut / "s" / "results.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and \
            not (ledger.is_file() and len(ledger.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    err = interrupt(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "finished" not in json.loads((cut / "s" / "search.json").read_text())["runs"][-1]  # stopped mid-run
    resumed = subprocess.run([sys.executable, "-m", "anchoropt.cli", "search", "--resume", str(cut / "s")],
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(json.loads((cut / "s" / "search.json").read_text())["runs"]) >= 2  # it was resumed
    assert drawn(cut / "s") == drawn(whole / "s")
    assert "interrupted and resumed, draws the same trials" in (cut / "s" / "best_config.yaml").read_text()
