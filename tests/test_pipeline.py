"""The main job (`anchoropt run`), end to end on a tiny suite: searches, benchmark, report, resume."""
import json

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

    report = run_main_job(suite, results, report_dir, space=space, search_trials=1, objective="test",
                          max_concurrent=2)
    assert report == report_dir / "report.md" and report.is_file()
    text = report.read_text()
    for method in ("coop", "one", "two"):
        assert f"- {method}:" in text
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in (results / "cells").rglob("seed1.json")}
    assert set(records) == {"coop", "one", "two"}
    for method, schedule in (("one", "one_stage"), ("two", "two_stage")):
        best = yaml.safe_load((results / "searches" / schedule / "best_config.yaml").read_text())
        assert records[method]["tuning"] == "search_test" and records[method]["eval_split"] == "test"
        assert records[method]["config"]["n_anchors"] == best["n_anchors"]
        assert records[method]["config"]["schedule"] == schedule
    assert records["coop"]["tuning"] == "untuned"
    assert suite.read_text() == before  # the suite file is read, never rewritten

    capsys.readouterr()
    run_main_job(suite, results, report_dir, space=space, search_trials=1, objective="test")
    out = capsys.readouterr().out
    assert "3 cells, 3 done, 0 to go" in out and "1/1 trials done" in out
