"""A search's fixed cost: Ray Tune's count of callback classes (usage statistics, which are off) does
not import MLflow into the driver."""
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_tune_callback_usage_count_imports_no_mlflow(tmp_path):
    code = ("import sys\n"
            "from anchoropt.raytools import skip_callback_usage_tag\n"
            "from anchoropt.tracking import tracking_callbacks\n"
            "import ray.tune.tune as tune_run\n"
            "skip_callback_usage_tag()\n"
            f"tune_run.air_usage.tag_callbacks(tracking_callbacks({str(tmp_path)!r}))\n"
            "print('mlflow' in sys.modules)\n")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
