"""Zero-shot table of a CLIP on the toy-11 datasets: base and novel accuracy against chance.

Runs the standard path (``anchoropt.train.train`` with ``method=zeroshot``: CoOp loaders,
cached image features, the dataset's template) on every toy dataset, creating the datasets
first if missing. Chance is 100 / (classes in the half). Usage::

    python -m anchoropt.toy.zeroshot --root data/toy11
"""
from __future__ import annotations

import argparse
import math

from anchoropt.config import make_config
from anchoropt.data import build_dataset
from anchoropt.toy.datasets import make_toy11
from anchoropt.train import train


def zeroshot_row(root: str, dataset: str, backbone: str = "ToyCLIP", pretrained: str = "toy",
                 cache_dir: str = "~/.cache/anchoropt") -> dict:
    """Zero-shot ``acc_base`` / ``acc_novel`` (percent, test images) and their chance levels."""
    n = len(build_dataset(root, dataset).classnames)
    cfg = make_config(dict(dataset=dataset, data_root=str(root), method="zeroshot", backbone=backbone,
                           pretrained=pretrained, cache_dir=cache_dir, shots=1))
    metrics = train(cfg)["metrics"]
    n_base = math.ceil(n / 2)
    return {"dataset": dataset, "classes": n, "acc_base": metrics["acc_base"], "chance_base": 100 / n_base,
            "acc_novel": metrics["acc_novel"], "chance_novel": 100 / (n - n_base)}


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`zeroshot_row` results with the x-chance factors."""
    lines = ["| dataset | C | base | chance | x chance | novel | chance | x chance |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['classes']} | {r['acc_base']:.1f} | {r['chance_base']:.1f} | "
                     f"{r['acc_base'] / r['chance_base']:.1f} | {r['acc_novel']:.1f} | {r['chance_novel']:.1f} | "
                     f"{r['acc_novel'] / r['chance_novel']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/toy11", help="data root (toy-11 written there if missing)")
    parser.add_argument("--backbone", default="ToyCLIP")
    parser.add_argument("--pretrained", default="toy")
    args = parser.parse_args(argv)
    names = make_toy11(args.root)
    print(format_table([zeroshot_row(args.root, n, args.backbone, args.pretrained) for n in names]))


if __name__ == "__main__":
    main()
