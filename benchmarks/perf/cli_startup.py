"""How long do the light commands take to start, and do they load torch?

Runs each command in a fresh interpreter ``--rounds`` times, interleaved with ``python -c "import
torch"`` (the cost they must not pay), and prints the median wall time of each, plus the heavy
modules each command loaded (from ``python -X importtime``):

    python benchmarks/perf/cli_startup.py              # --help, train --help, data list, --version
    python benchmarks/perf/cli_startup.py --rounds 9

Timings on shared machines swing several-fold: compare the medians printed in one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"--help": ["--help"], "train --help": ["train", "--help"], "data list": ["data", "list"],
            "--version": ["--version"]}
HEAVY = ("torch", "torchvision", "open_clip", "ray", "optuna", "pandas")


def _run(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - start


def _loaded(argv: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "anchoropt.cli", *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True).stderr
    names = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if line.startswith("import time:")}
    return [m for m in HEAVY if m in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in [*COMMANDS, "import torch (reference)"]}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(_run(["-m", "anchoropt.cli", *argv]))
        times["import torch (reference)"].append(_run(["-c", "import torch"]))
    for name, values in times.items():
        loaded = _loaded(COMMANDS[name]) if name in COMMANDS else ["torch"]
        print(f"{name:<26} median {statistics.median(values):6.2f} s over {args.rounds}  "
              f"heavy modules loaded: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
