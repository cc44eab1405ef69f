"""The main job (`anchoropt run`), end to end on a tiny suite: searches, benchmark, report, resume."""
import json

import pandas as pd
import pytest
import yaml

from anchoropt.pipeline import run_main_job
from tests.helpers import TINY_SPACE, write_suite


@pytest.mark.ray
def test_run_main_job_searches_benchmarks_reports_and_resumes(tmp_path, eurosat_root, ray_session, capsys):
    suite = write_suite(tmp_path, eurosat_root, seeds=(1,), methods={
        "coop": {"method": "coop"},
        "one": {"method": "anchoropt", "schedule": "one_stage"},
        "two": {"method": "anchoropt", "schedule": "two_stage"}},
        extra={"baseline": "coop", "schedule_methods": {"one_stage": "one", "two_stage": "two"}})
    before = suite.read_text()
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {k: TINY_SPACE["params"][k] for k in ("n_anchors", "lr")}}))
    results, report_dir = tmp_path / "results", tmp_path / "report"

    report = run_main_job(suite, results, report_dir, space=space, search_trials=2, objective="test",
                          max_concurrent=2)
    assert report == report_dir / "report.md" and report.is_file()
    text = report.read_text()
    for method in ("coop", "one", "two", "one_tuned", "two_tuned"):
        assert f"({method}):" in text
    for section in ("## Anchor count and learning rates: a search per dataset", "## Equal tuning budgets",
                    "## Does tuning help? Tuned vs reference defaults", "## The three answers, as measured",
                    "Main job wall time"):
        assert section in text
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in (results / "cells").rglob("seed1.json")}
    assert set(records) == {"coop", "one", "two", "one_tuned", "two_tuned"}
    for method, schedule in (("one", "one_stage"), ("two", "two_stage")):
        search = results / "searches" / schedule / "eurosat"  # a search per (schedule, dataset)
        best = yaml.safe_load((search / "best_config.yaml").read_text())
        tuned = records[f"{method}_tuned"]
        assert tuned["tuning"] == "search_test" and tuned["eval_split"] == "test"
        assert tuned["config"]["n_anchors"] == best["n_anchors"] and tuned["config"]["schedule"] == schedule
        assert records[method]["tuning"] == "untuned"  # the reference defaults stay in the benchmark
        # no early stopping by default: ASHA-stopped trials' val HM did not rank test HM on toy-11 (issue 24)
        assert json.loads((search / "search.json").read_text())["scheduler"] == "none"
        assert pd.read_csv(search / "trials.csv").loc[0, "origin"] == "default config"
    assert records["coop"]["tuning"] == "untuned"
    assert suite.read_text() == before  # the suite file is read, never rewritten
    assert (report_dir / "search_best_so_far.png").is_file() and (report_dir / "tuned_vs_defaults.csv").is_file()

    out = capsys.readouterr().out
    assert "searches: 2 (2 schedules x 1 datasets), 4 trials, 0 done before" in out
    assert "two_stage / eurosat: search " in out and "one_stage / eurosat: search " in out
    tail = out[out.rindex("The three answers, as measured:"):]  # printed at the end, in plain words
    assert "3. Does tuning help?" in tail and tail.count("\n") < 10 and "**" not in tail
    job = json.loads((results / "job.json").read_text())
    assert job["wall_time_s"] > 0 and job["invocations"] == 1 and job["suite"] == str(suite)
    assert job["tuned"] == {"one_stage": "one_tuned", "two_stage": "two_tuned"}

    run_main_job(suite, results, report_dir, space=space, search_trials=2, objective="test", dry_run=True)
    out = capsys.readouterr().out  # a dry run after the job: every cell done, the tuned ones too
    assert "5 cells, 5 done, 0 to run" in out and "once those searches have run" not in out

    run_main_job(suite, results, report_dir, space=space, search_trials=2, objective="test")
    out = capsys.readouterr().out
    assert "5 cells, 5 done, 0 to go" in out and "2/2 trials done" in out
    assert json.loads((results / "job.json").read_text())["wall_time_s"] == job["wall_time_s"]  # nothing ran
    text = report.read_text()
    assert f"Main job wall time up to this report: {job['wall_time_s'] / 60:.1f} min" in text

    from anchoropt.cli import main
    main(["report", str(results), "--out", str(tmp_path / "again")])  # the report from the results alone
    assert (tmp_path / "again" / "report.md").read_text() == text
