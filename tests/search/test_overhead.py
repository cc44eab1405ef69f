"""What a search costs beyond training: Ray Tune's count of callback classes (usage statistics, which
are off) imports no MLflow into the driver, and per-epoch reports need not hold training up."""
import os
import subprocess
import sys
import threading
import time

import pytest

from anchoropt.search.trial import Reports
from tests.helpers import REPO_ROOT


def test_tune_callback_usage_count_imports_no_mlflow(tmp_path):
    code = ("import sys\n"
            "from anchoropt.raytools import skip_callback_usage_tag\n"
            "from anchoropt.tracking import tracking_callbacks\n"
            "import ray.tune.tune as tune_run\n"
            "skip_callback_usage_tag()\n"
            f"tune_run.air_usage.tag_callbacks(tracking_callbacks({str(tmp_path)!r}, None, dict, dict))\n"
            "print('mlflow' in sys.modules)\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_reports_in_a_thread_keep_their_order_and_do_not_hold_training_up():
    release, sent = threading.Event(), []

    def send(metrics):  # a driver that has not asked for the next result yet
        release.wait(10)
        sent.append(metrics["epoch"])

    reports = Reports(send)
    t = time.monotonic()
    for epoch in range(1, 6):
        reports.put({"epoch": epoch})
    assert time.monotonic() - t < 1.0 and sent == []  # training went on
    release.set()
    reports.close()  # returns once every report is sent
    assert sent == [1, 2, 3, 4, 5]


def test_a_failed_report_is_raised_in_the_training_thread():
    def send(metrics):
        if metrics["epoch"] == 2:
            raise ValueError("epoch 2 cannot be reported")

    reports = Reports(send)
    reports.put({"epoch": 1})
    reports.put({"epoch": 2})
    reports.thread.join(10)  # the thread stopped at the failure
    with pytest.raises(ValueError, match="epoch 2"):
        reports.put({"epoch": 3})
    with pytest.raises(ValueError, match="epoch 2"):
        reports.close()


def test_tune_stopping_the_trial_stops_training_at_its_next_report():
    def send(metrics):
        raise SystemExit(0)  # what tune.report does once Tune has stopped the trial

    reports = Reports(send)
    reports.put({"epoch": 1})
    reports.thread.join(10)
    with pytest.raises(SystemExit):
        reports.put({"epoch": 2})
    reports.close()  # nothing to raise: the stop is not an error
