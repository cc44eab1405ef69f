#!/usr/bin/env bash
# One-call GPU check: CUDA training of every method, fp16 vs fp32 logits, a 4-trial search on a
# quarter GPU each, Stage II throughput at 100 and 1000 classes, peak GPU memory; one table.
# Exit 1 on any failed check; without CUDA: one line, exit 0. Options: see check.py --help.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0
exec timeout 480 python benchmarks/gpu/check.py "$@"
