"""How much room does toy-11 leave to tune, and what does each val noise reduction buy?

Usage::

    python benchmarks/scripts/tuning_room.py knobs --results results/toy11 --datasets toy_shape,toy_colour
    python benchmarks/scripts/tuning_room.py noise --results results/toy11 --datasets toy_shape,toy_colour
    python benchmarks/scripts/tuning_room.py oracle --results results/toy11 --table results/toy11/val_vs_test.csv \
        --seeds 2,3

``knobs``: one knob at a time away from the suite's defaults (``benchmarks/toy11.yaml``'s config,
CoOp+AnchorOPT two-stage), each value trained on ``--seeds`` and scored on the test images; per
knob, the spread (max − min over its values) of the seed-mean test HM, averaged over datasets,
beside the seed-to-seed spread of the defaults (the noise floor). Writes ``knobs.csv``.

``noise``: ``--configs`` configurations drawn at random (seeded) from ``--space`` per dataset,
each scored with the val objective under every option of ``OPTIONS`` (its HM, HM's standard error
and the seconds one trial takes) and once on the test images (seed 1); prints per option the mean
SE, the mean trial time relative to the plain objective, and the mean within-dataset Spearman rho
between that val objective and test HM. Writes ``noise.csv``.
``oracle``: can any configuration of the main job's searches beat the defaults on test HM? Per search
(``--results``' ``searches/<schedule>/<dataset>/``), the trial with the highest test HM in ``--table``
(``val_vs_test.py``'s CSV, test seed 1: an oracle that looks at test labels) and trial 0 (the defaults)
are retrained on the fresh ``--seeds`` and scored on the test images. Per schedule: oracle − defaults
test HM (HM of the seed-averaged accuracies) over datasets, with the report's bootstrap CI and
Wilcoxon p (``anchoropt.report.statistics.compare_over_datasets``), beside the same gain on seed 1
(where the oracle was picked, biased upwards) and the seed-to-seed SD of the defaults' test HM.
Writes ``--out`` (default RESULTS/oracle.csv; one row per run).
Each runs in this process (no Ray), one thread.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from scipy import stats

from anchoropt.escape import write_csv

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
    write_csv(table, args.results / "knobs.csv")
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
    write_csv(table, args.results / "noise.csv")
    plain = table[table["option"] == "plain"].groupby("dataset")["seconds"].mean()
    for name, g in table.groupby("option", sort=False):
        rho = [stats.spearmanr(d["val_hm"], d["test_hm"]).statistic for _, d in g.groupby("dataset")]
        rho = [r for r in rho if r == r]
        cost = (g.groupby("dataset")["seconds"].mean() / plain).mean()
        print(f"{name}: mean SE {g['hm_se'].mean():.2f}, images {g['n_images'].mean():.0f}, trial time x{cost:.2f}, "
              f"within-dataset Spearman val vs test {sum(rho) / max(1, len(rho)):.2f} ({len(rho)} datasets)")
    return table


def oracle(args) -> pd.DataFrame:
    """The ``oracle`` runs (module docstring); prints :func:`oracle_summary`."""
    from val_vs_test import changes, test_accs, trial_configs

    table = pd.read_csv(args.table)
    trials = {(s, d, int(row["trial"])): (row["params"], base)
              for s, d, row, base in trial_configs(args.results, changes=changes(args.set))}
    rows = []
    for (schedule, dataset), g in table.groupby(["schedule", "dataset"]):
        if args.datasets and dataset not in args.datasets:
            continue
        picks = {"defaults": 0, "oracle": int(g.loc[g["test_hm"].idxmax(), "trial"])}
        for which, trial in picks.items():
            params, base = trials[(schedule, dataset, trial)]
            for seed in args.seeds:
                start = time.time()
                (acc_base, acc_novel), = test_accs(base, params, [seed])
                rows.append({"schedule": schedule, "dataset": dataset, "which": which, "trial": trial, "seed": seed,
                             "acc_base": acc_base, "acc_novel": acc_novel, "seconds": time.time() - start})
                print(rows[-1], flush=True)
    runs = pd.DataFrame(rows)
    write_csv(runs, args.out or args.results / "oracle.csv")
    print("\n".join(oracle_summary(runs, table)))
    return runs


def oracle_summary(runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Lines per schedule: oracle − defaults test HM on the fresh seeds of ``runs`` (``oracle``'s rows)
    over datasets (mean, 95% bootstrap CI, Wilcoxon p, nonzero differences), the same gain on ``table``'s
    seed (where the oracle was chosen), how many oracles are trial 0, and the mean over datasets of the
    defaults' seed-to-seed SD of test HM (one seed's HM, points)."""
    from anchoropt.metrics import harmonic_mean
    from anchoropt.report.statistics import compare_over_datasets

    runs = runs.assign(hm=[harmonic_mean(b, n) for b, n in zip(runs["acc_base"], runs["acc_novel"])])
    lines = []
    for schedule, r in runs.groupby("schedule"):
        mean = r.groupby(["dataset", "which"])[["acc_base", "acc_novel"]].mean()
        hm = pd.Series([harmonic_mean(b, n) for b, n in mean.to_numpy()], index=mean.index).unstack("which")
        c = compare_over_datasets(hm, "oracle", "defaults")
        t = table[(table["schedule"] == schedule) & table["dataset"].isin(hm.index)]
        seen = t.groupby("dataset")["test_hm"].max() - t[t["trial"] == 0].set_index("dataset")["test_hm"]
        picked = r[r["which"] == "oracle"].groupby("dataset")["trial"].first()
        sd = r[r["which"] == "defaults"].groupby("dataset")["hm"].std().mean()
        lines.append(
            f"{schedule}: oracle − defaults test HM on seeds {','.join(str(s) for s in sorted(r['seed'].unique()))}: mean {c['mean_diff']:+.2f} "
            f"(95% CI [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]), Wilcoxon p {c['p']:.2g} over {c['n_datasets']} "
            f"datasets ({c['n_nonzero']} nonzero); on the seed it was chosen on {seen.mean():+.2f}; oracle is trial 0 "
            f"on {(picked == 0).sum()}; defaults' seed-to-seed SD of test HM {sd:.2f}")
    return lines


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("knobs", "noise", "oracle"))
    p.add_argument("--results", type=Path, default=Path("results/tuning_room"))
    p.add_argument("--data-root", default="data/toy11")
    p.add_argument("--datasets", default=None,
                   help="comma-separated (default toy_shape,toy_colour,toy_count,toy_layout; oracle: every search's)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--configs", type=int, default=5)
    p.add_argument("--knobs", default=",".join(KNOBS), help="knobs: which (default all of KNOBS)")
    p.add_argument("--table", type=Path, help="oracle: val_vs_test.py's CSV of the searches in --results")
    p.add_argument("--out", type=Path, help="oracle: its CSV (default RESULTS/oracle.csv)")
    p.add_argument("--set", default="", help="oracle: key=value,... applied to every trial's configuration")
    p.add_argument("--space", default=str(Path(__file__).resolve().parents[2] / "search_spaces" / "anchors.yaml"))
    args = p.parse_args()
    args.datasets = (args.datasets.split(",") if args.datasets else
                     [] if args.what == "oracle" else ["toy_shape", "toy_colour", "toy_count", "toy_layout"])
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.knobs = args.knobs.split(",")
    if args.what != "oracle":  # oracle reads the main job's folder and writes only --out
        args.results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    {"knobs": knobs, "noise": noise, "oracle": oracle}[args.what](args)


if __name__ == "__main__":
    main()
