import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from anchoropt.benchmark import run_benchmark
from anchoropt.suite import load_suite
from tests.helpers import write_suite


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("seed*.json"))]


@pytest.mark.ray
def test_benchmark_writes_one_record_per_cell_and_skips_finished(tmp_path, eurosat_root, ray_session):
    suite = load_suite(write_suite(tmp_path, eurosat_root))
    results = tmp_path / "results"
    counts = run_benchmark(suite, results, cpus_per_trial=1, max_concurrent=2)
    assert counts == {"done": 6, "failed": 0, "skipped": 0}
    records = _records(results)
    assert sorted((r["method"], r["seed"]) for r in records) == sorted(
        (m, s) for m in ("zeroshot", "coop", "two") for s in (1, 2))
    assert all(r["tuning"] == "untuned" and r["eval_split"] == "test" and r["record_version"] == 2 for r in records)
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("seed*.json")}
    assert run_benchmark(suite, results) == {"done": 0, "failed": 0, "skipped": 6}
    assert stamps == {p: p.stat().st_mtime_ns for p in results.rglob("seed*.json")}


@pytest.mark.ray
def test_killed_benchmark_rerun_has_every_cell_exactly_once(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, seeds=(1, 2, 3))
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "anchoropt.cli", "benchmark", str(path), "--results", str(results),
           "--max-concurrent", "1"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    ray_dirs = set(Path(tempfile.gettempdir()).glob("anchoropt-ray-*"))  # a killed run leaves its own behind
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(results.rglob("seed*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes in its session
    proc.wait()
    time.sleep(5)  # a Ray worker outside the process group may still finish its cell: that is fine
    first = {p: p.read_bytes() for p in results.rglob("seed*.json")}
    assert 2 <= len(first) < 9
    done = subprocess.run(cmd, env=env, start_new_session=True, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(first)} done, {9 - len(first)} to go" in done.stdout
    records = _records(results)
    keys = [(r["method"], r["dataset"], r["seed"]) for r in records]
    assert len(keys) == 9 and len(set(keys)) == 9
    assert all(p.read_bytes() == b for p, b in first.items())  # finished cells were not rerun
    for leftover in set(Path(tempfile.gettempdir()).glob("anchoropt-ray-*")) - ray_dirs:
        shutil.rmtree(leftover, ignore_errors=True)


def test_cell_writes_learned_tensors_that_the_report_draws(tmp_path, eurosat_root):
    import torch

    from anchoropt.benchmark import plan_cells, prompts_path, run_cell
    from anchoropt.report import load_records, write_report

    suite = load_suite(write_suite(tmp_path, eurosat_root, seeds=(1,),
                                   methods={"two": {"method": "anchoropt", "schedule": "two_stage", "n_ctx": 2,
                                                    "n_anchors": 3}}))
    results = tmp_path / "results"
    (cell,) = plan_cells(suite, results)
    run_cell(cell)
    assert prompts_path(cell) == results / "two" / "eurosat" / "seed1.prompts.pt"
    assert torch.load(prompts_path(cell), weights_only=True)["position"].shape == (5, 5)  # M + N = 2 + 3
    assert not list(results.rglob("record.json"))  # train's own outputs stay outside RESULTS
    write_report(load_records(results), tmp_path / "report")
    positions = (tmp_path / "report" / "positions.csv").read_text().splitlines()
    assert len(positions) == 2 and positions[1].startswith("two,eurosat,1,1,2,")
