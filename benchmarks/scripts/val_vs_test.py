"""Does a search's objective predict test HM? Every trial of the main job's searches, retrained on
test images: Spearman correlation between each trial's search objective (val HM) and its test HM.

Usage::

    python benchmarks/scripts/val_vs_test.py results/toy11 --seeds 1 --out results/toy11/val_vs_test.csv

For each search folder ``RESULTS/searches/<schedule>/<dataset>/`` and each finished trial with an
HM, the trial's configuration (``search.json``'s base updated by the trial's parameters) is trained
with ``eval_split=test`` for each of ``--seeds`` in this process (no Ray; the search's seed is 1) and
scored on the base and novel test images; test HM is the HM of the seed-averaged accuracies (the
report's convention). Test labels are read here only, after the searches: nothing flows back.
``--set key=value,...`` changes every trial's configuration, e.g. ``cache_dir=results/cache`` to read
another checkout's searches (``search.json`` stores absolute paths) without writing into its cache.

Printed: Spearman rho (scipy.stats.spearmanr) over all trials pooled, over completed trials only, and
the mean of the within-search correlations (what selection inside one search depends on), with the
number of trials. The CSV holds one row per trial (schedule, dataset, trial, status, val_hm, val_se
when recorded, test_hm, parameters).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from scipy import stats

from anchoropt.escape import write_csv


def trial_configs(results: Path, schedule: str = "*", changes: dict | None = None):
    """(schedule, dataset, ledger row, base config updated by ``changes``) of every finished trial with
    an HM."""
    from anchoropt.search.ledger import read_results

    for search in sorted((results / "searches").glob(f"{schedule}/*/search.json")):
        spec = json.loads(search.read_text())
        for row in read_results(search.parent):
            if row.get("hm") is not None and row["status"] in ("complete", "stopped"):
                yield search.parent.parent.name, search.parent.name, row, {**spec["base"], **(changes or {})}


def changes(text: str) -> dict:
    """``--set``'s ``key=value,...`` as a dict of values typed by their keys (``anchoropt.config.typed_overrides``)."""
    from anchoropt.config import typed_overrides

    return typed_overrides([o for o in text.split(",") if o])


def test_accs(base: dict, params: dict, seeds: list[int]) -> list[tuple[float, float]]:
    """(base acc, novel acc) on the test images, percent, of ``base`` updated by ``params``, per seed."""
    from anchoropt.config import make_config
    from anchoropt.train import train

    accs = []
    for seed in seeds:
        m = train(make_config({**base, **params, "eval_split": "test", "seed": seed}, source="trial"))["metrics"]
        accs.append((m["acc_base"], m["acc_novel"]))
    return accs


def test_hm(base: dict, params: dict, seeds: list[int]) -> tuple[float, float, float]:
    """(test HM of the seed-averaged accuracies, mean base acc, mean novel acc), percent."""
    from anchoropt.metrics import harmonic_mean

    accs = test_accs(base, params, seeds)
    b = sum(a for a, _ in accs) / len(accs)
    n = sum(a for _, a in accs) / len(accs)
    return harmonic_mean(b, n), b, n


def val_hm(base: dict, params: dict, options: dict) -> dict:
    """The val objective of one configuration, trained to its full epochs under ``options``
    (e.g. ``val_folds=4``): hm, hm_se, images and seconds."""
    import time

    from anchoropt.config import make_config
    from anchoropt.train import train

    start = time.time()
    m = train(make_config({**base, **params, **options, "eval_split": "val"}, source="trial"))["metrics"]
    return {"val_hm": m["hm"], "val_se": m.get("hm_se"), "images": m.get("n_base", 0) + m.get("n_novel", 0),
            "seconds": time.time() - start}


def correlations(table: pd.DataFrame) -> dict:
    """Spearman rho and p over all trials, completed ones, and the mean within-search rho."""
    def rho(t: pd.DataFrame) -> tuple[float, float, int]:
        r = stats.spearmanr(t["val_hm"], t["test_hm"])
        return float(r.statistic), float(r.pvalue), len(t)

    within = [stats.spearmanr(g["val_hm"], g["test_hm"]).statistic
              for _, g in table.groupby(["schedule", "dataset"]) if len(g) >= 3 and g["val_hm"].nunique() > 1]
    within = [w for w in within if w == w]
    return {"all": rho(table), "complete": rho(table[table["status"] == "complete"]),
            "within_search_mean": (sum(within) / len(within) if within else float("nan"), len(within))}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="the main job's --results folder (holds searches/)")
    p.add_argument("--seeds", default="1", help="comma-separated seeds of the test runs (default 1)")
    p.add_argument("--out", type=Path, help="CSV of every trial (default RESULTS/val_vs_test.csv)")
    p.add_argument("--schedule", default="*", help="only the searches of this schedule (default all)")
    p.add_argument("--datasets", default="", help="comma-separated: only these datasets' searches")
    p.add_argument("--val-options", default=None,
                   help="rescore every trial on val instead (no test images): key=value,... of val options "
                        "('' for the plain objective at full epochs), e.g. val_folds=4")
    p.add_argument("--set", default="", help="key=value,... applied to every trial's configuration, "
                                             "e.g. cache_dir=results/cache")
    p.add_argument("--tables", type=Path, nargs="*", default=[],
                   help="CSVs written before (e.g. one per --schedule): only join them and print the correlations")
    args = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or args.results / "val_vs_test.csv"
    if args.tables:
        table = pd.concat([pd.read_csv(t) for t in args.tables], ignore_index=True)
        write_csv(table, out)
        _print(table, out, args.seeds)
        return
    rows = []
    only = set(filter(None, args.datasets.split(",")))
    if args.val_options is not None:
        options = changes(args.val_options)
        for schedule, dataset, row, base in trial_configs(args.results, args.schedule, changes(args.set)):
            if not only or dataset in only:
                rows.append({"schedule": schedule, "dataset": dataset, "trial": row["trial"],
                             "option": args.val_options or "plain", **val_hm(base, row["params"], options)})
                print(rows[-1], flush=True)
        write_csv(pd.DataFrame(rows), out)
        return
    for schedule, dataset, row, base in trial_configs(args.results, args.schedule, changes(args.set)):
        if only and dataset not in only:
            continue
        hm, b, n = test_hm(base, row["params"], seeds)
        rows.append({"schedule": schedule, "dataset": dataset, "trial": row["trial"], "status": row["status"],
                     "val_hm": row["hm"], "val_se": row.get("hm_se"), "test_hm": hm, "test_base": b,
                     "test_novel": n, **row["params"]})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    write_csv(table, out)
    _print(table, out, args.seeds)


def _print(table: pd.DataFrame, out: Path, seeds: str) -> None:
    c = correlations(table)
    print(f"{out}: {len(table)} trials, test seeds {seeds}")
    print(f"Spearman val HM vs test HM, all trials: rho {c['all'][0]:.3f} (p {c['all'][1]:.2g}, n {c['all'][2]})")
    print(f"  completed trials only: rho {c['complete'][0]:.3f} (p {c['complete'][1]:.2g}, n {c['complete'][2]})")
    print(f"  mean within-search rho: {c['within_search_mean'][0]:.3f} over {c['within_search_mean'][1]} searches")


if __name__ == "__main__":
    main()
