"""benchmarks/gpu/check.sh: on a machine without CUDA it says so in one line and exits 0."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_gpu_check_without_cuda_prints_one_line_and_exits_0():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("benchmarks/gpu/check.sh: skipped, no CUDA device (torch ")
