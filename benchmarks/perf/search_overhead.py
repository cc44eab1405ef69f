"""How much does Ray Tune + Optuna cost on top of the training itself?

Runs K searches of N trials each (seeds 0..K-1, C concurrent trials, 1 CPU each, local Ray started
once) in one of two ways, and then, unless ``--search-only``, the very same configurations one by
one in this process (``anchoropt.train.train`` in a loop):

- ``shared``: one ``run_searches`` call: one Tune run for all K searches, workers kept warm from
  one search to the next (what ``anchoropt run`` does with its 22 searches);
- ``separate``: K ``run_searches`` calls of one search each: a Tune run, and fresh workers, per
  search (what ``anchoropt search`` does, and what the main job did before).

``--mode both`` alternates the two, ``--rounds`` times each, in this one process (each search on
a fresh feature cache, so every round does the same work), and prints per round and the medians:

- wall time of the K searches (Ray start-up printed apart);
- in-trial time (``train_s``: features, Stage I, Stage II, per-epoch evaluations) and its sum / C;
- the share of wall time not training: ``1 - sum(in-trial) / C / wall``;
- search start to first trial start, and last trial end to return (outputs, plots).

The load average (os.getloadavg) is printed at start and end.

Setups: ``tiny`` (default; a 6-class solid-colour EuroSAT made here and the tests' 2-layer
TinyCLIP, random weights) or ``toy`` (the package's ToyCLIP with ``pretrained=toy`` on a toy-11
dataset; ``--data-root`` / ``--dataset``).

    python benchmarks/perf/search_overhead.py                       # tiny, 1 search of 12 trials, 2 at once
    python benchmarks/perf/search_overhead.py --setup toy --data-root data/toy11 --dataset toy_shape
    python benchmarks/perf/search_overhead.py --setup toy --search-only --trials 4 --epochs 3 \
        --searches 6 --mode both --rounds 3                          # shared vs separate Tune runs
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("ANCHOROPT_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))

import anchoropt.backbone  # noqa: E402,F401  (torchvision fix, model configs)

SPACE = {"params": {  # the anchors.yaml space with epoch counts kept at the base's
    "n_anchors": {"type": "int", "low": 1, "high": 8},
    "lr": {"type": "float", "low": 5e-4, "high": 2e-2, "log": True},
    "anchor_lr": {"type": "float", "low": 5e-4, "high": 2e-2, "log": True},
}}


def tiny_base(work: Path, args) -> dict:
    from tests.conftest import EUROSAT_CLASSES
    from tests.helpers import make_split_dataset, write_descriptions

    root = work / "data"
    make_split_dataset(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES,
                       per_class=(max(args.shots, 4) + 4, 8, 10))
    write_descriptions(root / "eurosat_prompts_full.json", EUROSAT_CLASSES)
    return dict(dataset="eurosat", data_root=str(root), descriptions_dir=str(root), backbone="TinyCLIP-test",
                pretrained="")


def toy_base(work: Path, args) -> dict:
    root = Path(args.data_root).expanduser().resolve()
    if not (root / args.dataset).is_dir():
        from anchoropt.toy.datasets import make_toy11
        make_toy11(root, names=[args.dataset])
    return dict(dataset=args.dataset, data_root=str(root), backbone="ToyCLIP", pretrained="toy")


def run_once(mode: str, work: Path, base: dict, args) -> dict:
    """The K searches one way (``shared`` or ``separate``) on a fresh folder and feature cache;
    returns their figures (seconds)."""
    import pandas as pd

    from anchoropt.search.driver import run_searches
    from anchoropt.search.ledger import read_results

    work.mkdir(parents=True)
    requests = [dict(space=SPACE, out=work / f"search{k}", num_trials=args.trials,
                     base={**base, "cache_dir": str(work / "cache")}, objective=args.objective,
                     max_concurrent=args.concurrent, cpus_per_trial=1, seed=k) for k in range(args.searches)]
    start = time.time()
    found = run_searches(requests) if mode == "shared" else [run_searches([r])[0] for r in requests]
    wall = time.time() - start
    assert all(res.n_complete == args.trials for res in found), [res.summary() for res in found]
    table = pd.concat([res.trials.sort_values("trial") for res in found], ignore_index=True)
    rows = [row for res in found for row in read_results(res.out_dir)]
    in_trial = float(table["train_s"].astype(float).sum())
    return {"mode": mode, "wall": wall, "in_trial": in_trial, "per_slot": in_trial / args.concurrent,
            "not_training": 1 - in_trial / args.concurrent / wall,
            "first_start": min(r["started_at"] for r in rows) - start,
            "tail": start + wall - max(r["finished_at"] for r in rows), "table": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=("tiny", "toy"), default="tiny")
    ap.add_argument("--data-root", default="data/toy11")
    ap.add_argument("--dataset", default="toy_shape")
    ap.add_argument("--trials", type=int, default=12, help="trials per search")
    ap.add_argument("--searches", type=int, default=1, help="searches (seeds 0..K-1)")
    ap.add_argument("--mode", choices=("shared", "separate", "both"), default="shared")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of each mode (alternated with --mode both)")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--anchor-epochs", type=int, default=50)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--train-views", type=int, default=4)
    ap.add_argument("--objective", default="val")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the sequential run (trials get 1 CPU each; default 1)")
    ap.add_argument("--search-only", action="store_true", help="skip the sequential in-process run")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]

    import ray
    import torch

    from anchoropt.config import make_config
    from anchoropt.raytools import ensure_ray
    from anchoropt.train import cached_backbone, train

    work = Path(tempfile.mkdtemp(prefix="search_overhead_"))
    try:
        base = (tiny_base if args.setup == "tiny" else toy_base)(work, args)
        base.update(shots=args.shots, epochs=args.epochs, anchor_epochs=args.anchor_epochs,
                    train_views=args.train_views, device="cpu", eval_split=args.objective, batch_size=32)
        t = time.time()
        ensure_ray(num_cpus=args.concurrent)
        ray_start = time.time() - t
        modes = ["shared", "separate"] if args.mode == "both" else [args.mode]
        runs = []
        for r in range(args.rounds):
            for mode in modes:
                runs.append(run_once(mode, work / f"{mode}{r}", base, args))
                f = runs[-1]
                print(f"round {r} {mode:8s}: wall {f['wall']:6.1f} s, in-trial {f['in_trial']:6.1f} s "
                      f"({f['per_slot']:.1f} s per slot), not training {f['not_training']:.1%}, first trial "
                      f"start {f['first_start']:.1f} s, after last trial {f['tail']:.1f} s", flush=True)
        ray.shutdown()

        print(f"setup {args.setup}: {args.searches} search(es) of {args.trials} trials, {args.concurrent} "
              f"concurrent (1 CPU each), epochs {args.epochs}, anchor_epochs {args.anchor_epochs}, shots "
              f"{args.shots}, train_views {args.train_views}, objective {args.objective}; cpus {os.cpu_count()}")
        print(f"ray start-up (once)  {ray_start:.1f} s")
        for mode in modes:
            mine = [f for f in runs if f["mode"] == mode]
            med = {k: statistics.median(f[k] for f in mine) for k in ("wall", "per_slot", "not_training")}
            print(f"{mode:8s} median of {len(mine)}: wall {med['wall']:.1f} s, in-trial per slot "
                  f"{med['per_slot']:.1f} s, share of wall time not training {med['not_training']:.1%}")

        if not args.search_only:
            # the same configurations, one by one, in this process (fresh cache)
            torch.set_num_threads(args.threads)
            configs = [make_config({**base, **{k: v for k, v in row.items() if k in SPACE["params"]},
                                    "cache_dir": str(work / "cache_seq")}) for row in runs[0]["table"].to_dict("records")]
            t = time.time()
            first = configs[0]
            cached_backbone(first.backbone, first.pretrained, first.quick_gelu, "cpu", first.preprocess)
            backbone_load = time.time() - t
            seq_times = []
            t = time.time()
            for cfg in configs:
                t0 = time.time()
                train(cfg, report=lambda m: None)
                seq_times.append(time.time() - t0)
            seq_wall = time.time() - t
            print(f"sequential in-process wall ({len(configs)} x train()) {seq_wall:.1f} s (+ backbone load "
                  f"{backbone_load:.1f} s; per run median {statistics.median(seq_times):.2f} s); "
                  f"{runs[0]['mode']} search wall {runs[0]['wall']:.1f} s: speed-up {seq_wall / runs[0]['wall']:.2f} x")
        print(f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        if args.keep:
            print(f"work folder kept: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
