"""Experiment tracking mirrors what happened (issue 27): MLflow run status, one run per trial reused on
retry, params and metrics, the stored tracking URI, the store checked before Ray starts, TensorBoard
steps, and SIGTERM handled like Ctrl-C. MLflow runs on a local sqlite store."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import yaml

from anchoropt.search.trial import outcome
from anchoropt.tracking import MLflowLogger, MLflowTarget, experiment_name
from tests.helpers import interrupt, search_base, write_suite
from tests.test_progress import _run_scalars

COOP_SPACE = {"params": {"method": "coop", "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}


class _Trial(SimpleNamespace):
    def __str__(self):
        return self.name


def trial(name: str, last: dict | None = None) -> _Trial:
    return _Trial(name=name, config={"lr": 0.01, "_optuna_trial": 0}, last_result=last or {}, error_file=None,
                  pickled_error_file=None, get_pickled_error=lambda: None)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One local sqlite store for the module (creating its tables takes seconds); tests use their own experiments."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def _logger(uri, experiment):
    target = MLflowTarget(uri, experiment)
    logger = MLflowLogger(target, params_of=lambda c: {"lr": c["lr"], "dataset": "eurosat"},
                          outcome_of=lambda r: outcome(r, error=False))
    logger.setup()
    return logger, logger.client


def _runs(client, logger):
    return {r.info.run_name: r for r in client.search_runs([logger.experiment_id])}


def test_mlflow_runs_mirror_finished_pruned_failed_and_killed_trials(mlflow_db):
    logger, client = _logger(mlflow_db, "statuses")
    cases = {"done": {"hm": 60.0, "epoch": 2, "epochs": 2}, "pruned": {"hm": 40.0, "epoch": 1, "epochs": 2},
             "nan": {"hm": float("nan"), "epoch": 2, "epochs": 2}, "cut": None}
    for name, last in cases.items():
        t = trial(name)
        logger.on_trial_start(0, [], t)
        logger.on_trial_result(0, [], t, {"hm": 30.0, "loss": 1.5, "epoch": 1, "epochs": 2, "train_s": 3.0,
                                          "pid": 123, "done": False, "config": {"lr": 0.01}})
        if last is not None:
            t.last_result = last
            logger.on_trial_complete(0, [], t)
    logger.close(interrupted=True)  # Ctrl-C or SIGTERM with "cut" still running
    runs = _runs(client, logger)
    assert {k: r.info.status for k, r in runs.items()} == {"done": "FINISHED", "pruned": "FINISHED", "nan": "FAILED",
                                                           "cut": "KILLED"}
    assert runs["pruned"].data.tags.get("pruned") == "true" and "pruned" not in runs["done"].data.tags
    assert "non-finite hm" in runs["nan"].data.tags["error"]
    assert runs["cut"].data.tags["killed"] == "interrupted"
    assert runs["done"].data.params == {"lr": "0.01", "dataset": "eurosat"}
    # only per-epoch values, at step = epoch; no config values, Ray internals or timings
    assert set(runs["done"].data.metrics) == {"hm", "loss"}
    assert [m.step for m in client.get_metric_history(runs["done"].info.run_id, "hm")] == [1, 2]


def test_ctrl_c_during_an_mlflow_write_waits_for_the_write(mlflow_db, monkeypatch):
    """A SIGTERM raised inside an MLflow write (SQLAlchemy) left the SQLite store locked: the run
    could not be ended as KILLED and MLflow logged a traceback. The signal now acts after the write,
    also when it is sent to the process (as ``kill`` and a terminal do) while other threads run, as
    Ray's do in a search: the kernel hands it to a thread that does not block it, and Python still
    runs its handler in the main thread (a signal mask of the main thread alone deferred nothing)."""
    logger, client = _logger(mlflow_db, "cut_write")
    t = trial("trial-0000")
    logger.on_trial_start(0, [], t)
    write = client.log_batch
    done = threading.Event()
    other = threading.Thread(target=done.wait)  # a thread started before the write, as Ray's are
    other.start()

    seen, told = os.pipe()  # the wakeup fd: written by the C-level handler, in whichever thread got the signal
    os.set_blocking(told, False)

    def interrupted_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the write starts
        os.read(seen, 1)  # the signal has arrived (Python runs its handler from here on)
        return write(*args, **kwargs)
    monkeypatch.setattr(client, "log_batch", interrupted_write)
    wakeup = signal.set_wakeup_fd(told)
    try:
        with pytest.raises(KeyboardInterrupt):
            logger.on_trial_result(0, [], t, {"hm": 30.0, "epoch": 1, "epochs": 2})
    finally:
        signal.set_wakeup_fd(wakeup)
        done.set()
        other.join()
        os.close(seen)
        os.close(told)
    monkeypatch.setattr(client, "log_batch", write)
    logger.close(interrupted=True)
    run = _runs(client, logger)["trial-0000"]
    assert run.data.metrics == {"hm": 30.0} and run.info.status == "KILLED"


def test_trackers_close_on_the_way_out_telling_an_interruption_behind_another_error(mlflow_db):
    """A SIGTERM that Ray Tune's clean-up turns into another error (it calls ``on_experiment_end``
    first) is still an interruption; a failure is not; a normal end closes what is left open."""
    from anchoropt.tracking import closing_trackers

    logger, client = _logger(mlflow_db, "ways_out")
    ways = {"hidden": (RuntimeError, KeyboardInterrupt), "failed": (RuntimeError, None), "ended": (None, None)}
    for name, (raised, behind) in ways.items():
        t = trial(name)
        with pytest.raises(raised) if raised else contextlib.nullcontext(), closing_trackers([logger]):
            logger.on_trial_start(0, [], t)
            try:
                if behind:
                    raise behind()
            finally:
                logger.on_experiment_end(trials=[t])  # Tune's clean-up, on any way out of fit
                if raised:
                    raise raised("a lock's clean-up failed")
    runs = _runs(client, logger)
    assert {k: (r.info.status, r.data.tags["killed"]) for k, r in runs.items()} == {
        "hidden": ("KILLED", "interrupted"), "failed": ("KILLED", "the trial did not end"),
        "ended": ("KILLED", "the trial did not end")}


def test_a_retried_trial_reuses_its_run_and_a_stale_running_run_is_killed(mlflow_db):
    logger, client = _logger(mlflow_db, "retry")
    t = trial("trial-0000")
    logger.on_trial_start(0, [], t)  # then the process dies (kill -9): the run stays RUNNING
    assert _runs(client, logger)["trial-0000"].info.status == "RUNNING"

    logger, client = _logger(mlflow_db, "retry")  # the resume
    run = _runs(client, logger)["trial-0000"]
    assert run.info.status == "KILLED" and "found by a resume" in run.data.tags["killed"]
    logger.on_trial_start(0, [], t)
    t.last_result = {"hm": 50.0, "epoch": 2, "epochs": 2}
    logger.on_trial_complete(0, [], t)
    runs = client.search_runs([logger.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["attempts"] == "2" and "killed" not in runs[0].data.tags


def test_tensorboard_flushes_each_epoch_and_writes_each_step_once_across_attempts(tmp_path):
    from anchoropt.tracking import TensorBoardLogger

    board = TensorBoardLogger(tmp_path, params_of=lambda c: {"lr": c["lr"]})
    t = trial("coop.eurosat.seed1")
    board.on_trial_start(0, [], t)
    board.on_trial_result(0, [], t, {"hm": 30.0, "epoch": 1, "epochs": 3})
    assert [s for s, _ in _run_scalars(tmp_path / str(t))["hm"]] == [1]  # on disk at once, not 30 s later
    board.on_trial_start(0, [], t)  # the attempt was cut (a resume, a retry): its steps are run again
    for epoch in (1, 2, 3):
        board.on_trial_result(0, [], t, {"hm": 30.0 + epoch, "loss": 1.0, "epoch": epoch, "epochs": 3})
    t.last_result = {"hm": 33.0, "acc_base": 40.0, "acc_novel": 28.0}  # the cell's final scores
    board.on_trial_complete(0, [], t)
    scalars = _run_scalars(tmp_path / str(t))
    assert [s for s, _ in scalars["hm"]] == [1, 2, 3]  # each step once, none past the last epoch
    assert set(scalars) == {"hm", "loss"}


def _refusing_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there, a connect is refused


def _main(capsys, *argv):
    from anchoropt.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def search_args(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(COOP_SPACE))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({k: v for k, v in search_base(tiny_cfg).items()
                                                        if k != "eval_split"}))
    return ["search", "--space", "space.yaml", "--num-trials", "1", "--out", "s", "--config", "base.yaml"]


def test_bad_tracking_stores_stop_a_command_before_ray_with_one_line(search_args, tmp_path, capsys, monkeypatch,
                                                                   mlflow_db, eurosat_root):
    """Every kind of store that cannot be logged to, given to search, benchmark or run."""
    from mlflow.tracking import MlflowClient

    ray_starts = []  # (a session's shared Ray may be up already: watch for a start instead)
    monkeypatch.setattr("anchoropt.raytools.ensure_ray", lambda *a, **k: ray_starts.append(a))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    db = mlflow_db
    client = MlflowClient(tracking_uri=db)
    client.delete_experiment(client.create_experiment(experiment_name(tmp_path / "s", "search of coop")))
    capsys.readouterr()  # the store's set-up lines
    (tmp_path / "notes.txt").write_text("not a database")
    refusing = f"http://127.0.0.1:{_refusing_port()}"
    for uri, said in ((refusing, "no MLflow server answers at 127.0.0.1"),
                      ((tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE=true"),
                      ("mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
                      ("", "--mlflow needs a tracking URI"),
                      ("sqlite:///notes.txt", "cannot be opened as an MLflow tracking store (DatabaseError"),
                      ("sqlite:///notes.txt/m.db", "cannot be opened as an MLflow tracking store (FileExistsError"),
                      (db, "the experiment 's (search of coop)' was deleted there")):
        started = time.time()
        code, err = _main(capsys, *search_args, "--mlflow", uri)
        assert code == 2 and err.count("\n") == 1 and said in err, err
        assert time.time() - started < 20 and not ray_starts
        assert not (tmp_path / "s").exists()  # the corrected command is not blocked
    suite = write_suite(tmp_path, eurosat_root, seeds=(1,), methods={"coop": {"method": "coop"}})
    for command in (["benchmark", suite, "--results", "r"], ["run", "--suite", suite, "--results", "r"]):
        code, err = _main(capsys, *command, "--mlflow", refusing)
        assert code == 2 and err.count("\n") == 1 and "no MLflow server answers" in err, err
        assert not ray_starts and not (tmp_path / "r").exists()
    # a re-run logging as stored, after the experiment was deleted
    client.delete_experiment(client.create_experiment("r2 (benchmark tiny)"))
    (tmp_path / "r2").mkdir()
    stored = {"mlflow": {"uri": db, "experiment": "r2 (benchmark tiny)"}, "suites": [str(suite)]}
    (tmp_path / "r2" / "benchmark.yaml").write_text(yaml.safe_dump(stored))
    code, err = _main(capsys, "benchmark", suite, "--results", "r2")
    assert code == 2 and err.count("\n") == 1 and "'r2 (benchmark tiny)' was deleted there" in err, err
    assert not ray_starts


def test_enqueued_value_of_an_inactive_conditional_parameter_is_refused(tmp_path):
    from anchoropt.paths import shipped
    from anchoropt.search.space import parse_space
    from anchoropt.search.spec import SearchError, read_enqueue

    space = parse_space(yaml.safe_load(shipped("spaces", "schedule.yaml").read_text()), "schedule.yaml")
    base = {"schedule": "two_stage"}
    path = tmp_path / "enqueue.yaml"
    path.write_text(yaml.safe_dump([{"schedule": "one_stage", "period": 4}, {"period": 8, "schedule": "two_stage"}]))
    with pytest.raises(SearchError) as err:
        read_enqueue(path, space, base)
    assert str(err.value).startswith(f"{path} entry 2: period is used only when schedule is one_stage")
    path.write_text(yaml.safe_dump({"period": 8}))
    with pytest.raises(SearchError, match="does not set schedule"):
        read_enqueue(path, space, base)
    path.write_text(yaml.safe_dump({"schedule": "one_stage", "period": 8}))
    assert read_enqueue(path, space, base)[0]["params"] == {"schedule": "one_stage", "period": 8}


@pytest.mark.ray
@pytest.mark.slow
def test_failed_cell_is_a_failed_run_reused_when_the_benchmark_runs_again(tmp_path, eurosat_root, ray_session,
                                                                         capsys, mlflow_db):
    from mlflow.tracking import MlflowClient

    suite = write_suite(tmp_path, eurosat_root, seeds=(1,), methods={
        "coop": {"method": "coop"},
        "broken": {"method": "anchoropt", "mse_weight": 1e300}})  # overflows: NonFiniteLoss in Stage I
    results, uri = tmp_path / "results", mlflow_db
    code, err = _main(capsys, "benchmark", suite, "--results", results, "--mlflow", uri)
    assert code == 1, err
    assert yaml.safe_load((results / "benchmark.yaml").read_text())["mlflow"]["uri"] == uri
    code, err = _main(capsys, "benchmark", suite, "--results", results)  # retries the failed cell, still logging
    assert code == 1, err
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"{results} (benchmark tiny)")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["broken.eurosat.seed1", "coop.eurosat.seed1"]  # one run per cell
    broken = runs["broken.eurosat.seed1"]
    assert broken.info.status == "FAILED" and "NonFiniteLoss" in broken.data.tags["error"], broken.data.tags
    assert broken.data.tags["attempts"] == "2" and broken.data.params["mse_weight"] == "1e+300"
    coop = runs["coop.eurosat.seed1"]
    assert coop.info.status == "FINISHED" and "attempts" in coop.data.tags and coop.data.tags["attempts"] == "1"
    steps = [step for step, _ in _run_scalars(results / "tensorboard" / "coop.eurosat.seed1")["hm"]]
    assert steps == [1, 2]  # the suite's 2 epochs: no step past the last


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_stops_a_search_like_ctrl_c_and_tracking_resumes(search_args, tmp_path):
    """SIGTERM mid-trial: a message, exit 143, the trial's MLflow run KILLED and its TensorBoard
    epochs on disk; the resume (no --mlflow) re-runs it into the same MLflow and TensorBoard run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "anchoropt.cli", *search_args, "--mlflow", uri, "--num-cpus", "1", "epochs=12"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    board = tmp_path / "s" / "tensorboard" / "trial-0000"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_run_scalars(board).get("hm", [])) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    err = interrupt(proc, sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    said = [line for line in err.splitlines() if "anchoropt: terminated (SIGTERM)" in line]
    assert len(said) == 1 and "resume with `anchoropt search --resume s`" in said[0], err[-2000:]
    assert "Traceback" not in err
    first = [step for step, _ in _run_scalars(board)["hm"]]
    assert len(first) >= 2 and len(set(first)) == len(first)  # flushed at every epoch, each step once
    client = MlflowClient(tracking_uri=uri)
    stored = json.loads((tmp_path / "s" / "search.json").read_text())["mlflow"]
    experiment = client.get_experiment_by_name(stored["experiment"])
    assert stored["experiment"] == "s (search of coop)"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["killed"] == "interrupted"

    done = subprocess.run([sys.executable, "-m", "anchoropt.cli", "search", "--resume", "s", "--num-cpus", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [run] = client.search_runs([experiment.experiment_id])  # the retry (Optuna trial 1) reuses trial 0's run
    assert run.info.run_name == "trial-0000" and run.info.status == "FINISHED", run.data.tags
    assert run.data.tags["attempts"] == "2" and run.data.tags["trial"] == "1"
    assert [step for step, _ in _run_scalars(board)["hm"]] == list(range(1, 13))  # each step once, across attempts


def test_train_stopped_by_kill_exits_143_saying_nothing_was_kept(tiny_cfg, tmp_path):
    """SIGTERM stops every command as Ctrl-C does, not only those that run Ray."""
    overrides = [f"{k}={v}" for k, v in search_base(tiny_cfg, epochs=200).items() if k in (
        "dataset", "data_root", "backbone", "pretrained", "descriptions_dir", "cache_dir", "shots", "epochs",
        "train_views", "device")]
    proc = subprocess.Popen([sys.executable, "-m", "anchoropt.cli", "train", "method=coop", *overrides,
                             "--out", "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    for line in proc.stdout:  # training: its first epoch is printed
        if line.lstrip().startswith("epoch"):
            break
    err = interrupt(proc, sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip() == "anchoropt: terminated (SIGTERM); nothing of the interrupted run was kept", err[-2000:]
    assert not (tmp_path / "run").exists()


def test_the_stored_target_is_kept_replaced_or_turned_off(tmp_path, monkeypatch):
    from anchoropt.cli import _mlflow, parse_args
    from anchoropt.tracking import choose_target

    monkeypatch.chdir(tmp_path)
    new = choose_target("sqlite:///m.db", None, tmp_path / "results" / "cells", "benchmark toy11")
    assert new == MLflowTarget(f"sqlite:///{tmp_path / 'm.db'}", "results/cells (benchmark toy11)")  # absolute store
    stored = new.to_dict()
    assert choose_target(None, stored, "elsewhere", "x") == new  # a resume without --mlflow keeps logging
    assert choose_target(False, stored, "elsewhere", "x") is None  # --no-mlflow
    for command in (["search", "--resume", "s"], ["benchmark", "suite.yaml", "--results", "r"], ["run"]):
        assert [_mlflow(parse_args([*command, *flag])) for flag in ([], ["--no-mlflow"], ["--mlflow", "m"])] == \
            [None, False, "m"]
    assert choose_target("http://h:5000", stored, "elsewhere", "x") == MLflowTarget("http://h:5000", new.experiment)
    assert choose_target(None, None, "elsewhere", "x") is None
    # `anchoropt run`'s two schedules' searches of one dataset, and one dataset of two results folders
    named = {choose_target("sqlite:///m.db", None, folder, "search of anchoropt").experiment
             for folder in ("results/toy11/searches/one_stage/toy_shape",
                            "results/toy11/searches/two_stage/toy_shape", "results/a/dtd", "results/b/dtd")}
    assert len(named) == 4
