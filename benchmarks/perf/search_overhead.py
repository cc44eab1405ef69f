"""How much does Ray Tune + Optuna cost on top of the training itself?

Runs one search of N trials with C concurrent trials (local Ray, 1 CPU per trial), then the very
same N configurations one by one in this process (``anchoropt.train.train`` in a loop, fresh
cache so that features and Stage I are computed as in the search), and prints:

- search wall time (Ray start-up excluded and printed apart), sequential wall time, speed-up;
- per trial: Ray-side wall time (trial start to completion, as the driver sees it) against the
  in-trial time (``train_s``: features, Stage I, Stage II, per-epoch evaluations), and the fraction
  of trial time that is overhead;
- overall: ``search wall - sum(in-trial time) / C``, the time not explained by training at the
  achieved concurrency, and its fraction of the search wall time.

``--search-only`` skips the sequential run (to compare two versions of the code, run it
alternately in each checkout and compare medians). The load average (os.getloadavg) is printed
at start and end.

Setups: ``tiny`` (default; a 6-class solid-colour EuroSAT made here and the tests' 2-layer
TinyCLIP, random weights) or ``toy`` (the package's ToyCLIP with ``pretrained=toy`` on a toy-11
dataset; ``--data-root`` / ``--dataset``).

    python benchmarks/perf/search_overhead.py                       # tiny, 12 trials, 2 at once
    python benchmarks/perf/search_overhead.py --setup toy --data-root data/toy11 --dataset toy_shape
    python benchmarks/perf/search_overhead.py --setup toy --search-only    # overhead figures only
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", choices=("tiny", "toy"), default="tiny")
    ap.add_argument("--data-root", default="data/toy11")
    ap.add_argument("--dataset", default="toy_shape")
    ap.add_argument("--trials", type=int, default=12)
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
    from anchoropt.search.driver import run_search
    from anchoropt.train import cached_backbone, train

    work = Path(tempfile.mkdtemp(prefix="search_overhead_"))
    try:
        base = (tiny_base if args.setup == "tiny" else toy_base)(work, args)
        base.update(shots=args.shots, epochs=args.epochs, anchor_epochs=args.anchor_epochs,
                    train_views=args.train_views, device="cpu", eval_split=args.objective, batch_size=32)

        t = time.time()
        ensure_ray(num_cpus=args.concurrent)
        ray_start = time.time() - t

        t = search_start = time.time()
        res = run_search(SPACE, work / "search", args.trials, {**base, "cache_dir": str(work / "cache_search")},
                         objective=args.objective, max_concurrent=args.concurrent, cpus_per_trial=1, seed=0)
        search_wall = time.time() - t
        ray.shutdown()
        table = res.trials.sort_values("trial")
        from anchoropt.search.ledger import read_results
        rows = read_results(work / "search")
        first_start = min(r["started_at"] for r in rows) - search_start
        tail = search_start + search_wall - max(r["finished_at"] for r in rows)
        busy = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
        assert res.n_complete == args.trials, res.summary()

        seq_wall = None
        if not args.search_only:
            # the same configurations, one by one, in this process (fresh cache)
            torch.set_num_threads(args.threads)
            configs = [make_config({**base, **{k: v for k, v in row.items() if k in SPACE["params"]},
                                    "cache_dir": str(work / "cache_seq")}) for row in table.to_dict("records")]
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

        in_trial = table["train_s"].astype(float)
        trial_wall = table["wall_time_s"].astype(float)
        per_trial_overhead = trial_wall - in_trial
        unexplained = search_wall - in_trial.sum() / args.concurrent
        print(f"setup {args.setup}: {args.trials} trials, {args.concurrent} concurrent (1 CPU each), "
              f"epochs {args.epochs}, anchor_epochs {args.anchor_epochs}, shots {args.shots}, "
              f"train_views {args.train_views}, objective {args.objective}; torch threads in-process "
              f"{torch.get_num_threads()}, cpus {os.cpu_count()}")
        print(f"ray start-up (once)                      {ray_start:8.1f} s")
        print(f"search wall ({args.concurrent} concurrent, Ray start excluded)  {search_wall:8.1f} s")
        if seq_wall is not None:
            print(f"sequential in-process wall ({args.trials} x train()) {seq_wall:8.1f} s  "
                  f"(+ backbone load {backbone_load:.1f} s; per run median {statistics.median(seq_times):.2f} s)")
            print(f"speed-up search vs sequential            {seq_wall / search_wall:8.2f} x "
                  f"({(seq_wall + ray_start) / (search_wall + ray_start):.2f} x counting Ray start-up)")
        report_s = table["report_s"].astype(float)
        print(f"in-trial time: sum {in_trial.sum():.1f} s, median {in_trial.median():.2f} s per trial, of which "
              f"inside ray.tune.report (per-epoch) {report_s.sum():.2f} s = {report_s.sum() / in_trial.sum():.1%}")
        print(f"trial wall (driver view): median {trial_wall.median():.2f} s; overhead per trial median "
              f"{per_trial_overhead.median():.2f} s = {per_trial_overhead.sum() / trial_wall.sum():.1%} "
              f"of trial wall time")
        print(f"search wall - sum(in-trial)/{args.concurrent} = {unexplained:.1f} s "
              f"= {unexplained / search_wall:.1%} of the search wall time (Ray/Optuna/Tune overhead, worker "
              f"start-up, idle slots)")
        print(f"  of which: search start to first trial start {first_start:.1f} s (study, Tuner, actor + worker "
              f"imports), last trial end to return {tail:.1f} s (Tune teardown, tables, importances, plots); "
              f"trials running {busy:.1f} s for {in_trial.sum() / args.concurrent:.1f} s of in-trial work "
              f"per slot ({1 - in_trial.sum() / args.concurrent / busy:.1%} overhead in steady state)")
        print(f"first trial in-trial {table['train_s'].iloc[0]:.2f} s (features + backbone in a fresh worker)")
        print(f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        if args.keep:
            print(f"work folder kept: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
