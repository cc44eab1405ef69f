"""The toy-11 figures of the README: zero-shot with the description ensemble vs the single
template, and zero-shot, CoOp and CoOp+AnchorOPT two-stage against chance.

Usage::

    python benchmarks/scripts/toy_figures.py --root data/toy11 --results results/toy11_defaults
    python benchmarks/scripts/toy_figures.py --root data/toy11 --descriptions-only

Creates toy-11 under ``--root`` if missing and prints the description-vs-template table
(:func:`description_table`, no training). Unless ``--descriptions-only``, it then runs the ``zeroshot_clip``, ``coop`` and
``coop_anchoropt_two_stage`` cells of ``benchmarks/toy11.yaml`` (16 shots, seeds 1-3, untuned:
the TrainConfig defaults, i.e. the reference settings of SPEC sections 3-5 with the toy
augmentation) through the benchmark (finished cells are skipped), and prints one markdown table:
base and novel accuracy (test images, mean over seeds) and HM per dataset, with chance
``100 / classes in the half``, then how many datasets reach twice chance at zero-shot and which
are near saturation.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

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


def description_table(root: str, datasets=None, cache_dir: str = "~/.cache/anchoropt") -> str:
    """Markdown table of zero-shot accuracy (%, test images) per dataset, base and novel: the
    dataset's single template vs the CuPL ensemble (Pratt et al. 2023: a class's text feature is
    the mean of its L2-normalised description features, every sentence of ``descriptions.json``),
    ToyCLIP, then how many datasets the descriptions lead on novel and the averages.

    Raises:
        DataError: a dataset missing under ``root`` or without descriptions.
    """
    import torch
    import torch.nn.functional as F

    from anchoropt.config import make_config
    from anchoropt.data import load_descriptions
    from anchoropt.task import build_task
    from anchoropt.toy.datasets import SENTENCES_PER_CLASS, TOY11_NAMES
    from anchoropt.prompts import clip_logits
    from anchoropt.train import cached_backbone

    backbone = cached_backbone("ToyCLIP", "toy", None, "cpu", "")
    model, tok = backbone.model, backbone.tokenizer
    datasets = list(datasets or TOY11_NAMES)
    head = ["dataset", "C", "chance b / n", "template b / n", "descriptions b / n", "novel gain"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    wins, sums = 0, [0.0] * 4
    for d in datasets:
        cfg = make_config(dict(dataset=d, data_root=root, method="zeroshot", shots=1, cache_dir=cache_dir))
        task = build_task(cfg, backbone)
        accs = []
        for half in ("base", "novel"):
            ev = task.evals[half]
            sentences = load_descriptions(task.descriptions_path, ev.classnames, SENTENCES_PER_CLASS)
            with torch.no_grad():
                template = model.encode_text(tok([ev.template.format(c) for c in ev.classnames]))
                flat = F.normalize(model.encode_text(tok([s for per in sentences for s in per])), dim=-1)
                ensemble = flat.view(len(sentences), SENTENCES_PER_CLASS, -1).mean(1)
            for text in (template, ensemble):
                pred = clip_logits(ev.features, text, model.logit_scale).argmax(-1)
                accs.append(100.0 * (pred == ev.labels).float().mean().item())
        tb, db, tn, dn = accs
        wins += dn > tn
        sums = [a + b for a, b in zip(sums, (tb, tn, db, dn))]
        n, cb, cn = chance(root, d)
        lines.append(f"| {d} | {n} | {cb:.1f} / {cn:.1f} | {tb:.1f} / {tn:.1f} | {db:.1f} / {dn:.1f} | {dn - tn:+.1f} |")
    tb, tn, db, dn = (v / len(datasets) for v in sums)
    lines.append(f"| average | | | {tb:.1f} / {tn:.1f} | {db:.1f} / {dn:.1f} | {dn - tn:+.1f} |")
    lines += ["", f"Descriptions ahead of the template on novel: {wins} of {len(datasets)} datasets."]
    return "\n".join(lines)


def figures_table(records: pd.DataFrame, root: str, methods=tuple(METHODS)) -> str:
    """Markdown table from benchmark records (``anchoropt.report.load_records``) of ``methods``
    (keys of ``METHODS``, ``zeroshot_clip`` among them): per dataset C, chance, and base / novel
    (/ HM) per method, means over seeds, then an average row (means of base and novel; HM of
    those averages), a zero-shot summary and, with ``coop``, on how many datasets CoOp is above
    zero-shot on base and below it on novel.

    Raises:
        KeyError: a method of ``methods`` has no records.
    """
    def cell(method: str, base: float, novel: float, hm: float) -> str:
        return f"{base:.1f} / {novel:.1f}" + ("" if method == "zeroshot_clip" else f" / {hm:.1f}")

    means = records.groupby(["method", "dataset"])[["acc_base", "acc_novel", "hm"]].mean()
    datasets = list(dict.fromkeys(records["dataset"]))
    head = ["dataset", "C", "chance b / n"] + [f"{label} b / n" + ("" if m == "zeroshot_clip" else " / HM")
                                              for m, label in METHODS.items() if m in methods]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    twice, saturated, coop_pattern = 0, [], 0
    for d in datasets:
        n, cb, cn = chance(root, d)
        cells = [d, str(n), f"{cb:.1f} / {cn:.1f}"]
        cells += [cell(m, *means.loc[(m, d)]) for m in methods]
        zb, zn = means.loc[("zeroshot_clip", d), ["acc_base", "acc_novel"]]
        if "coop" in methods:
            cb_, cn_ = means.loc[("coop", d), ["acc_base", "acc_novel"]]
            coop_pattern += bool(cb_ > zb and cn_ < zn)
        twice += bool(zb >= 2 * cb and zn >= 2 * cn)
        if max(zb, zn) >= SATURATED:
            saturated.append(d)
        lines.append("| " + " | ".join(cells) + " |")
    avg = ["average", "", ""]
    for m in methods:
        b, nv = (means.loc[m].loc[datasets, c].mean() for c in ("acc_base", "acc_novel"))
        avg.append(cell(m, b, nv, harmonic_mean(b, nv)))
    lines.append("| " + " | ".join(avg) + " |")
    lines += ["", f"Zero-shot at least twice chance on base and novel: {twice} of {len(datasets)} datasets; "
              f"at or above {SATURATED:.0f} % on base or novel: {', '.join(saturated) or 'none'}. "
              "Average row: means over datasets; HM of the averaged base and novel."]
    if "coop" in methods:
        lines += ["", f"CoOp above zero-shot on base and below it on novel: {coop_pattern} of {len(datasets)} datasets."]
    return "\n".join(lines)


def main(argv=None) -> None:
    from anchoropt.benchmark import run_benchmark
    from anchoropt.pipeline import ensure_toy_data
    from anchoropt.records import load_records
    from anchoropt.config import typed_overrides
    from anchoropt.suite import load_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/toy11", help="toy-11 data root (created if missing)")
    parser.add_argument("--results", default="results/toy11_defaults", help="benchmark records (resumable)")
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="suite methods to run and tabulate (zeroshot_clip always)")
    parser.add_argument("--descriptions-only", action="store_true",
                        help="print only the description-vs-template table (no training)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="TrainConfig keys replacing the suite's shared config "
                             "(CoOp's reference: n_ctx=16 epochs=200)")
    args = parser.parse_args(argv)
    suite = load_suite(Path(__file__).resolve().parent.parent / "toy11.yaml",
                       {"data_root": args.root, **typed_overrides(args.overrides)})
    methods = ["zeroshot_clip"] + [m for m in args.methods if m != "zeroshot_clip"]
    suite = dataclasses.replace(suite, methods={m: suite.methods[m] for m in methods})
    ensure_toy_data(suite)
    print(description_table(args.root))
    if args.descriptions_only:
        return
    counts = run_benchmark(suite, args.results, cpus_per_trial=args.cpus_per_trial)
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} cells failed; re-run to retry them")
    print(figures_table(load_records(args.results), args.root, methods))


if __name__ == "__main__":
    main()
