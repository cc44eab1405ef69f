"""How much room does toy-11 leave to tune, and what does each val noise reduction buy?

Usage::

    python benchmarks/scripts/tuning_room.py knobs --results results/toy11 --datasets toy_shape,toy_colour
    python benchmarks/scripts/tuning_room.py noise --results results/toy11 --datasets toy_shape,toy_colour

``knobs``: one knob at a time away from the suite's defaults (``benchmarks/toy11.yaml``'s config,
CoOp+AnchorOPT two-stage), each value trained on ``--seeds`` and scored on the test images; per
knob, the spread (max − min over its values) of the seed-mean test HM, averaged over datasets,
beside the seed-to-seed spread of the defaults (the noise floor). Writes ``knobs.csv``.

``noise``: ``--configs`` configurations drawn at random (seeded) from ``--space`` per dataset,
each scored with the val objective under every option of ``OPTIONS`` (its HM, HM's standard error
and the seconds one trial takes) and once on the test images (seed 1); prints per option the mean
SE, the mean trial time relative to the plain objective, and the mean within-dataset Spearman rho
between that val objective and test HM. Writes ``noise.csv``.
Both run in this process (no Ray), one thread.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from scipy import stats

KNOBS = {"kd_weight": [100.0, 10000.0], "ce_weight": [10.0, 1000.0], "n_ctx": [2, 8], "epochs": [5, 20],
         "n_anchors": [4, 8], "lr": [5e-4, 8e-3], "anchor_lr": [5e-4, 8e-3]}
OPTIONS = {"plain": {}, "val_partitions=3": {"val_partitions": 3}, "val_folds=4": {"val_folds": 4},
           "val_seeds=3": {"val_seeds": 3}, "val_shots=8": {"val_shots": 8}}


def base_config(datasets_root: str, dataset: str) -> dict:
    from anchoropt.suite import load_suite, method_values

    suite = load_suite(Path(__file__).resolve().parents[1] / "toy11.yaml", {"data_root": datasets_root})
    return {**method_values(suite, "coop_anchoropt_two_stage", dataset)[0], "dataset": dataset}


def run(values: dict) -> tuple[dict, float]:
    from anchoropt.config import make_config
    from anchoropt.train import train

    start = time.time()
    metrics = train(make_config(values, source="tuning_room"))["metrics"]
    return metrics, time.time() - start


def knobs(args) -> pd.DataFrame:
    rows = []
    for dataset in args.datasets:
        base = base_config(args.data_root, dataset)
        points = [("default", None)] + [(k, v) for k in args.knobs for v in KNOBS[k]]
        for knob, value in points:
            for seed in args.seeds:
                m, secs = run({**base, **({knob: value} if value is not None else {}), "seed": seed})
                rows.append({"dataset": dataset, "knob": knob, "value": value, "seed": seed, "test_hm": m["hm"],
                             "seconds": secs})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.results / "knobs.csv", index=False)
    mean = table.groupby(["dataset", "knob", "value"], dropna=False)["test_hm"].mean().reset_index()
    default = mean[mean["knob"] == "default"].set_index("dataset")["test_hm"]
    lines = []
    for knob in args.knobs:
        k = mean[(mean["knob"] == knob)].copy()
        spread = [max(g["test_hm"].max(), default[d]) - min(g["test_hm"].min(), default[d]) for d, g in k.groupby("dataset")]
        gain = [g["test_hm"].max() - default[d] for d, g in k.groupby("dataset")]
        lines.append(f"{knob}: spread {sum(spread) / len(spread):.2f}, best value minus default {sum(gain) / len(gain):+.2f}")
    floor = table[table["knob"] == "default"].groupby("dataset")["test_hm"].agg(lambda x: x.max() - x.min()).mean()
    print("\n".join(lines))
    print(f"noise floor: seed-to-seed spread of the defaults {floor:.2f} (seeds {args.seeds})")
    return table


def noise(args) -> pd.DataFrame:
    import optuna

    from anchoropt.search.space import load_space

    space = load_space(args.space)
    rows = []
    for dataset in args.datasets:
        base = base_config(args.data_root, dataset)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for c in range(args.configs):
            params = space.define_by_run(study.ask()) if c else {}  # config 0: the defaults
            test, _ = run({**base, **params, "seed": 1})
            for name, option in OPTIONS.items():
                m, secs = run({**base, **params, **option, "seed": 1, "eval_split": "val"})
                rows.append({"dataset": dataset, "config": c, "option": name, "val_hm": m["hm"],
                             "hm_se": m.get("hm_se"), "n_images": m.get("n_base", 0) + m.get("n_novel", 0),
                             "seconds": secs, "test_hm": test["hm"], **params})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.results / "noise.csv", index=False)
    plain = table[table["option"] == "plain"].groupby("dataset")["seconds"].mean()
    for name, g in table.groupby("option", sort=False):
        rho = [stats.spearmanr(d["val_hm"], d["test_hm"]).statistic for _, d in g.groupby("dataset")]
        rho = [r for r in rho if r == r]
        cost = (g.groupby("dataset")["seconds"].mean() / plain).mean()
        print(f"{name}: mean SE {g['hm_se'].mean():.2f}, images {g['n_images'].mean():.0f}, trial time x{cost:.2f}, "
              f"within-dataset Spearman val vs test {sum(rho) / max(1, len(rho)):.2f} ({len(rho)} datasets)")
    return table


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("knobs", "noise"))
    p.add_argument("--results", type=Path, default=Path("results/tuning_room"))
    p.add_argument("--data-root", default="data/toy11")
    p.add_argument("--datasets", default="toy_shape,toy_colour,toy_count,toy_layout")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--configs", type=int, default=5)
    p.add_argument("--knobs", default=",".join(KNOBS), help="knobs: which (default all of KNOBS)")
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[2] / "search_spaces" / "anchors.yaml"))
    args = p.parse_args()
    args.datasets = args.datasets.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.knobs = args.knobs.split(",")
    args.results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    {"knobs": knobs, "noise": noise}[args.what](args)


if __name__ == "__main__":
    main()
