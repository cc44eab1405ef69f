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
from tests.helpers import TINY, one_trial_actor_killed, write_suite


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
    path = write_suite(tmp_path, eurosat_root, seeds=(1, 2, 3), methods={  # trained cells long enough to be killed mid-way
        "zeroshot": {"method": "zeroshot"}, "coop": {"method": "coop", "epochs": 40},
        "two": {"method": "anchoropt", "schedule": "two_stage", "epochs": 40}})
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


def _cli(*args, timeout=600, **popen):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "anchoropt.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def _one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("anchoropt: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.ray
def test_cells_are_keyed_by_config_and_data_and_broken_records_rerun(tmp_path, eurosat_root, ray_session):
    data_root = tmp_path / "data"
    shutil.copytree(eurosat_root, data_root)
    methods = {"zs": {"method": "zeroshot"}}
    suite_path = write_suite(tmp_path, eurosat_root, methods=methods, seeds=(1,),
                        extra={"config": {"data_root": str(data_root), "backbone": TINY, "pretrained": "none",
                                          "descriptions_dir": str(eurosat_root), "cache_dir": str(tmp_path / "c"),
                                          "shots": 4, "epochs": 5, "device": "cpu"}})
    results = tmp_path / "results"
    assert run_benchmark(load_suite(suite_path), results)["done"] == 1
    record = results / "zs" / "eurosat" / "seed1.json"
    # another resolved config: refused with one line naming the record and the change
    with pytest.raises(ValueError, match=r"1 record\(s\).*seed1.json: epochs 5 -> 7.*another --results"):
        run_benchmark(load_suite(suite_path, {"epochs": 7}), results)
    # device and cache location say where, not what: still the same cell
    assert run_benchmark(load_suite(suite_path, {"cache_dir": str(tmp_path / "c2")}), results)["skipped"] == 1
    # the same cell on changed data (a class renamed in the split file) is refused too
    split = data_root / "eurosat" / "split_zhou_EuroSAT.json"
    original = split.read_text()
    split.write_text(original.replace('"Forest"', '"Woodland"'))
    with pytest.raises(ValueError, match="dataset eurosat has other files or classes"):
        run_benchmark(load_suite(suite_path), results)
    split.write_text(original)
    # the CLI says the same in one line, exit 2
    _one_line_error(_cli("benchmark", suite_path, "epochs=7", "--results", results), "epochs 5 -> 7")
    # a truncated or empty record is not a result: the cell is re-run, saying so
    for broken in (record.read_bytes()[:40], b""):
        record.write_bytes(broken)
        assert run_benchmark(load_suite(suite_path), results) == {"done": 1, "failed": 0, "skipped": 0}
        assert json.loads(record.read_text())["cell_identity"]["config"]["epochs"] == 5


def test_second_benchmark_on_a_locked_results_folder_is_refused(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, methods={"zs": {"method": "zeroshot"}}, seeds=(1,))
    results = tmp_path / "results"
    results.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(results / '.benchmark.lock')!r}); lock.acquire(); print('held', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(_cli("benchmark", path, "--results", results, timeout=120), "in use by another benchmark")
        assert not list(results.rglob("seed*.json"))
    finally:
        holder.kill()
        holder.wait()


def test_output_locations_are_checked_before_any_work(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, methods={"zs": {"method": "zeroshot"}}, seeds=(1,))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    runs = [_cli("benchmark", path, "--results", a_file, timeout=120),
            _cli("benchmark", path, f"cache_dir={a_file}", "--results", tmp_path / "r", timeout=120),
            _cli("benchmark", path, "--results", a_file / "sub", timeout=120)]
    _one_line_error(runs[0], "--results", "is a file")
    _one_line_error(runs[1], "cache_dir", str(a_file))
    _one_line_error(runs[2], "is a file")
    assert not any("Ray instance" in done.stderr for done in runs)  # refused before Ray started
    assert not list(tmp_path.rglob("seed*.json"))


def test_unreachable_ray_address_fails_fast_with_one_line(tmp_path, eurosat_root):
    path = write_suite(tmp_path, eurosat_root, methods={"zs": {"method": "zeroshot"}}, seeds=(1,))
    done = _cli("benchmark", path, "--results", tmp_path / "r", "--address", "127.0.0.1:1", timeout=120)  # Ray: minutes
    _one_line_error(done, "127.0.0.1:1", "ray start --head")


@pytest.mark.ray
def test_cell_whose_actor_dies_is_rerun_not_failed(tmp_path, eurosat_root, ray_session):
    path = write_suite(tmp_path, eurosat_root, methods={"coop": {"method": "coop", "epochs": 200}}, seeds=(1,))
    results = tmp_path / "results"
    with one_trial_actor_killed(timeout_s=120) as killed:  # the cell trains for 200 epochs: killed mid-way
        counts = run_benchmark(load_suite(path), results)
    assert killed, "the trial's actor was never seen"
    assert counts == {"done": 1, "failed": 0, "skipped": 0}
    assert len(_records(results)) == 1


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
