"""What a search prints and logs from the command line: one progress bar, nothing of Ray's, TensorBoard
and MLflow runs, an importances plot, ``search show`` and ``--dry-run`` (read only)."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray
SPACE = {"params": {"n_anchors": {"type": "categorical", "choices": [1, 2]},
                    "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}}}
EPOCHS = 2
RAY_NOISE = ("Tuner.restore", "Token authentication", "View detailed results", "Trial status", "╭", "/tmp/ray",
             "Started a local Ray", "Wrote the latest version")


def _cli(*argv, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "anchoropt.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          timeout=timeout)
    # decoded by hand: text mode would turn a progress bar's \r redraws into lines
    return SimpleNamespace(returncode=proc.returncode, stdout=proc.stdout.decode(), stderr=proc.stderr.decode())


@pytest.fixture(scope="module")
def searched(tmp_path_factory, eurosat_root):
    """A 2-trial search run as a user would (its own local Ray), logging to a local MLflow store."""
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("search")
    base = dict(dataset="eurosat", data_root=str(eurosat_root), backbone=TINY, pretrained="",
                descriptions_dir=str(eurosat_root), cache_dir=str(tmp / "cache"), shots=4, epochs=EPOCHS,
                anchor_epochs=2, train_views=1, batch_size=8, device="cpu")
    (tmp / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = tmp / "search"
    proc = _cli("search", "--space", str(tmp / "space.yaml"), "--num-trials", "2", "--out", str(out),
                "--config", str(tmp / "base.yaml"), "--num-cpus", "1", "--sampler", "random", "--mlflow", uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, uri, proc


def test_search_prints_one_bar_and_the_summary_only(searched):
    out, _, proc = searched
    text = proc.stdout + proc.stderr
    lines = [ln for ln in text.split("\n") if ln.strip()]  # a bar redraws with \r on one line
    assert len(lines) <= 6, text  # bar, summary (best HM, its verdict against the defaults, file, reproducibility)
    bar = [ln for ln in lines if "trials |" in ln]
    assert len(bar) == 1 and "2/2 trials" in bar[0].split("\r")[-1] and "best HM" in bar[0], text
    assert "[" in bar[0] and "<" in bar[0]  # elapsed<ETA
    assert f"search {out}: 2/2 trials done" in proc.stdout
    for noise in RAY_NOISE:
        assert noise not in text, noise


def _scalars(event_file: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, i, out = event_file.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _run_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    scalars = {}
    for f in folder.glob("events.out.tfevents.*"):
        scalars.update(_scalars(f))
    return scalars


def test_tensorboard_gets_per_epoch_metrics_under_the_search_folder(searched):
    out, _, _ = searched
    runs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert runs == ["trial-0000", "trial-0001"]
    for run in runs:
        scalars = _run_scalars(out / "tensorboard" / run)
        assert [step for step, _ in scalars["hm"]] == list(range(1, EPOCHS + 1))
        assert set(scalars) == {"hm", "acc_base", "acc_novel", "loss"}  # per-epoch values only


def test_mlflow_store_holds_one_run_per_trial_with_epoch_metrics(searched):
    from mlflow.tracking import MlflowClient

    out, uri, _ = searched
    client = MlflowClient(tracking_uri=uri)
    stored = json.loads((out / "search.json").read_text())["mlflow"]
    assert stored == {"uri": uri, "experiment": f"{out} (search of anchoropt_two_stage)"}  # out: not under the cwd
    experiment = client.get_experiment_by_name(stored["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0000", "trial-0001"]
    for run in runs:
        assert run.info.status == "FINISHED"
        # the full resolved config, once, as params; metrics: only the per-epoch values, no Ray internals
        assert {"n_anchors", "lr", "schedule", "dataset", "epochs", "eval_split"} <= set(run.data.params)
        assert set(run.data.metrics) == {"hm", "acc_base", "acc_novel", "loss"}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "hm")] == list(range(1, EPOCHS + 1))


def test_importances_plot_is_written(searched):
    out, _, _ = searched
    assert (out / "importances.png").stat().st_size > 1000


def _main(capsys, *argv):
    """The command line in this process: (exit code, stdout, stderr)."""
    from anchoropt.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_show_summarises_without_rewriting(searched, capsys):
    out, _, _ = searched
    before = {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    code, stdout, _ = _main(capsys, "search", "show", str(out))
    assert code == 0
    assert f"search {out}: 2/2 trials done" in stdout and "best HM" in stdout
    assert "trials by HM, completed first" in stdout and "top 2 of 2" in stdout and "n_anchors" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
    code, _, stderr = _main(capsys, "search", "show", str(out.parent))
    assert code == 2 and stderr.count("\n") == 1 and "not a search folder" in stderr


def test_search_dry_run_lists_what_would_run_and_writes_nothing(searched, tmp_path, capsys):
    out, _, _ = searched
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = _main(capsys, "search", "--resume", str(out), "--num-trials", "5", "--dry-run")
    assert code == 0
    assert "2/5 trials done (0 failed); 3 to run" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, stdout, _ = _main(capsys, "search", "--space", str(out.parent / "space.yaml"), "--num-trials", "4",
                            "--out", str(tmp_path / "new"), "--config", str(out.parent / "base.yaml"), "--dry-run")
    assert code == 0
    assert "would run 4 trial(s)" in stdout
    assert "n_anchors: one of 1, 2" in stdout and "lr: float 0.001..0.05 log" in stdout
    assert not (tmp_path / "new").exists()


def test_benchmark_filters_dry_run_bar_and_trackers(tmp_path, eurosat_root, ray_session, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tests.helpers import write_suite

    suite = str(write_suite(tmp_path, eurosat_root, methods={"zeroshot": {"method": "zeroshot"},
                                                             "coop": {"method": "coop"}}, seeds=(1, 2)))
    # MLflow's file store here (the search test uses its sqlite store); MLflow 3 wants it allowed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    results, uri = tmp_path / "results", (tmp_path / "mlruns").as_uri()
    code, stdout, _ = _main(capsys, "benchmark", suite, "--results", str(results), "--dry-run")
    assert code == 0 and "4 cells, 0 done, 4 to run" in stdout
    assert sum(ln.strip().startswith("to run") for ln in stdout.splitlines()) == 4
    assert not results.exists()

    code, stdout, stderr = _main(capsys, "benchmark", suite, "--results", str(results), "--methods", "coop",
                                 "--seeds", "1", "--mlflow", uri)
    assert code == 0, stderr
    assert [p.relative_to(results).as_posix() for p in results.rglob("seed*.json")] == ["coop/eurosat/seed1.json"]
    text = stdout + stderr
    assert len([ln for ln in text.split("\n") if ln.strip()]) <= 3, text  # plan line, bar, counts
    assert "1/1 cells" in stderr and "[" in stderr and "<" in stderr
    for noise in RAY_NOISE:
        assert noise not in text, noise
    scalars = _run_scalars(results / "tensorboard" / "coop.eurosat.seed1")
    epochs = json.loads((results / "coop" / "eurosat" / "seed1.json").read_text())["config"]["epochs"]
    assert [step for step, _ in scalars["hm"]] == list(range(1, epochs + 1))  # per epoch, no step past the last
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(f"{results} (benchmark tiny)").experiment_id])
    assert [r.info.run_name for r in runs] == ["coop.eurosat.seed1"]
    assert len(client.get_metric_history(runs[0].info.run_id, "hm")) >= 2  # per epoch
    assert (tmp_path / "mlruns" / runs[0].info.experiment_id / runs[0].info.run_id).is_dir()

    code, stdout, _ = _main(capsys, "benchmark", suite, "--results", str(results), "--dry-run")
    assert "4 cells, 1 done, 3 to run" in stdout and "done    coop / eurosat / seed 1" in stdout
    code, _, stderr = _main(capsys, "benchmark", suite, "--results", str(results), "--datasets", "dtd")
    assert code == 2 and "--datasets: dtd not in the suite" in stderr
