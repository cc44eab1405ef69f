"""The main job's bookkeeping (issue 26, issue 28): its dry run before any data exists, and its wall
time summed over the invocations that did work."""
import json

from anchoropt.pipeline import JOB_FILE, WorkClock, read_job, run_main_job


def test_dry_run_without_toy_data_plans_instead_of_failing(tmp_path, capsys, monkeypatch):
    """`anchoropt run --dry-run` exited 2 ("data root not found") where `anchoropt run` makes the data."""
    monkeypatch.chdir(tmp_path)
    assert run_main_job(results="results", report_dir="report", overrides={"data_root": "toy"},
                        dry_run=True) is None
    out = capsys.readouterr().out
    assert "toy datasets toy_shape, toy_colour" in out and "would be made under toy first" in out
    assert "198 cells, 0 done, 198 to run" not in out  # the tuned cells wait for their searches
    assert "132 cells, 0 done, 132 to run" in out and "dataset to be made first" in out
    assert "(plus coop_anchoropt_two_stage_tuned: each dataset's two_stage search's best configuration" in out
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_wall_time_sums_the_runs_that_worked_and_a_no_op_rerun_keeps_it(tmp_path, monkeypatch):
    """Issue 28: after a resumed run the wall time counted only the last invocation; issue 26: a no-op
    rerun overwrote it (23.4 min became 0.2 min)."""
    now = [1000.0]
    monkeypatch.setattr("anchoropt.pipeline.time.time", lambda: now[0])
    first = WorkClock(tmp_path / JOB_FILE, started=now[0])
    now[0] += 60
    first.lap(worked=True)   # e.g. the searches, then a kill
    resumed = WorkClock(tmp_path / JOB_FILE, started=now[0] + 5)
    now[0] += 125
    resumed.lap(worked=False)  # searches already done: their check costs nothing
    now[0] += 40
    resumed.lap(worked=True)   # the benchmark
    assert read_job(tmp_path)["wall_time_s"] == 60 + 40 and read_job(tmp_path)["invocations"] == 2
    rerun = WorkClock(tmp_path / JOB_FILE, started=now[0])
    now[0] += 12
    rerun.lap(worked=False)
    rerun.save(suite="s.yaml")
    job = json.loads((tmp_path / JOB_FILE).read_text())
    assert job["wall_time_s"] == 100 and job["invocations"] == 2 and job["suite"] == "s.yaml"
