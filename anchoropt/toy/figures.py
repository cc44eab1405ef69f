"""The toy-11 figures of the README: zero-shot, CoOp and CoOp+AnchorOPT two-stage against chance.

Usage::

    python -m anchoropt.toy.figures --root data/toy11 --results results/toy11_defaults

Creates toy-11 under ``--root`` if missing, runs the ``zeroshot_clip``, ``coop`` and
``coop_anchoropt_two_stage`` cells of ``benchmarks/toy11.yaml`` (16 shots, seeds 1-3, untuned:
the TrainConfig defaults, i.e. the reference settings of SPEC sections 3-5 with the toy
augmentation) through the benchmark (finished cells are skipped), and prints one markdown table:
base and novel accuracy (test images, mean over seeds) and HM per dataset, with chance
``100 / classes in the half``, then how many datasets reach twice chance at zero-shot and which
are near saturation.
"""
from __future__ import annotations

import argparse
import math

import pandas as pd

from anchoropt.data import build_dataset
from anchoropt.metrics import harmonic_mean

METHODS = {"zeroshot_clip": "zero-shot", "coop": "CoOp", "coop_anchoropt_two_stage": "AnchorOPT two-stage"}
SATURATED = 98.0  # zero-shot accuracy (%) at or above which a task leaves few-shot training no room


def chance(root: str, dataset: str) -> tuple[int, float, float]:
    """(classes, chance on base, chance on novel) in percent; base is the first ceil(C/2) classes."""
    n = len(build_dataset(root, dataset).classnames)
    n_base = math.ceil(n / 2)
    return n, 100.0 / n_base, 100.0 / (n - n_base)


def figures_table(records: pd.DataFrame, root: str) -> str:
    """Markdown table from benchmark records (``anchoropt.report.load_records``) of the methods in
    ``METHODS``: per dataset C, chance, and base / novel (/ HM) per method, means over seeds,
    then an average row (means of base and novel; HM of those averages) and a zero-shot summary.

    Raises:
        KeyError: a method of ``METHODS`` has no records.
    """
    def cell(method: str, base: float, novel: float, hm: float) -> str:
        return f"{base:.1f} / {novel:.1f}" + ("" if method == "zeroshot_clip" else f" / {hm:.1f}")

    means = records.groupby(["method", "dataset"])[["acc_base", "acc_novel", "hm"]].mean()
    datasets = list(dict.fromkeys(records["dataset"]))
    head = ["dataset", "C", "chance b / n"] + [f"{label} b / n" + ("" if m == "zeroshot_clip" else " / HM")
                                              for m, label in METHODS.items()]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    twice, saturated = 0, []
    for d in datasets:
        n, cb, cn = chance(root, d)
        cells = [d, str(n), f"{cb:.1f} / {cn:.1f}"]
        cells += [cell(m, *means.loc[(m, d)]) for m in METHODS]
        zb, zn = means.loc[("zeroshot_clip", d), ["acc_base", "acc_novel"]]
        twice += bool(zb >= 2 * cb and zn >= 2 * cn)
        if max(zb, zn) >= SATURATED:
            saturated.append(d)
        lines.append("| " + " | ".join(cells) + " |")
    avg = ["average", "", ""]
    for m in METHODS:
        b, nv = (means.loc[m].loc[datasets, c].mean() for c in ("acc_base", "acc_novel"))
        avg.append(cell(m, b, nv, harmonic_mean(b, nv)))
    lines.append("| " + " | ".join(avg) + " |")
    lines += ["", f"Zero-shot at least twice chance on base and novel: {twice} of {len(datasets)} datasets; "
              f"at or above {SATURATED:.0f} % on base or novel: {', '.join(saturated) or 'none'}. "
              "Average row: means over datasets; HM of the averaged base and novel."]
    return "\n".join(lines)


def main(argv=None) -> None:
    from anchoropt.benchmark import run_benchmark
    from anchoropt.suite import load_suite
    from anchoropt.pipeline import DEFAULT_SUITE, ensure_toy_data
    from anchoropt.report import load_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/toy11", help="toy-11 data root (created if missing)")
    parser.add_argument("--results", default="results/toy11_defaults", help="benchmark records (resumable)")
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    args = parser.parse_args(argv)
    suite = load_suite(DEFAULT_SUITE, {"data_root": args.root})
    suite.methods = {m: suite.methods[m] for m in METHODS}
    ensure_toy_data(suite)
    counts = run_benchmark(suite, args.results, cpus_per_trial=args.cpus_per_trial)
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} cells failed; re-run to retry them")
    print(figures_table(load_records(args.results), args.root))


if __name__ == "__main__":
    main()
