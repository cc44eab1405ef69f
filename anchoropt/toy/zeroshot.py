"""Zero-shot accuracy of a CLIP model on the toy-11 datasets (base and novel classes).

Self-contained: reads a dataset folder in the CoOp layout of ``docs/INTERFACES.md`` (``meta.json``,
the split json, images) with ``json`` and PIL only.

Protocol (SPEC section 7): the sorted label ids of the dataset; the first ceil(C/2) are base, the
rest novel. Base accuracy: test images of base classes, classified among the base classes only;
novel likewise. One prompt per class: the dataset's ``template`` filled with the class name.
Chance levels are 100 / (number of classes in the half).

Run ``python -m anchoropt.toy.zeroshot --root DIR`` to (write the toy-11 datasets under ``DIR``
if missing and) print the table for all eleven.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

import anchoropt  # noqa: F401  (torchvision fix; must precede open_clip)
import torch
import torch.nn.functional as F


def read_split(dataset_dir: Path) -> tuple:
    """Return ``(meta, split)`` of a CoOp-layout dataset folder (see docs/INTERFACES.md)."""
    dataset_dir = Path(dataset_dir)
    meta = json.loads((dataset_dir / "meta.json").read_text())
    split = json.loads((dataset_dir / meta["split_file"]).read_text())
    return meta, split


def _classnames(split: dict) -> Dict[int, str]:
    names: Dict[int, str] = {}
    for part in ("train", "val", "test"):
        for _, y, c in split.get(part, []):
            names.setdefault(int(y), c)
    return names


@torch.no_grad()
def zeroshot_accuracy(model, preprocess, tokenizer, dataset_dir, part: str = "test",
                      batch_size: int = 256, device: str = "cpu") -> dict:
    """Zero-shot accuracy (%) on base and novel classes of one dataset.

    Args:
        model: open_clip CLIP model (put in eval mode here).
        preprocess: image transform, PIL image -> tensor (3, H, W).
        tokenizer: list of str -> LongTensor (n, context_length).
        dataset_dir: folder with ``meta.json`` (CoOp layout).
        part: which split to evaluate ("test", "val" or "train").
        batch_size: images per forward pass.
        device: torch device.
    Returns:
        dict with ``acc_base``, ``acc_novel`` (percent), ``acc_all`` (all classes together),
        ``chance_base``, ``chance_novel``, ``chance_all``, ``n_classes``, ``n_base``, ``n_novel``,
        ``n_images_base``, ``n_images_novel``.
    Raises:
        FileNotFoundError: missing meta/split/image files. ValueError: labels not 0..C-1.
    """
    dataset_dir = Path(dataset_dir)
    meta, split = read_split(dataset_dir)
    names = _classnames(split)
    labels = sorted(names)
    if labels != list(range(len(labels))):
        raise ValueError(f"{dataset_dir}: labels are not contiguous 0..C-1")
    C = len(labels)
    k = math.ceil(C / 2)
    template = meta.get("template", "a photo of a {}.")
    model.eval()
    prompts = [template.format(names[y]) for y in labels]
    tf = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)

    items = split[part]
    img_dir = dataset_dir / meta.get("image_dir", "images")
    feats, ys = [], []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        x = torch.stack([preprocess(Image.open(img_dir / rel).convert("RGB")) for rel, _, _ in chunk])
        feats.append(F.normalize(model.encode_image(x.to(device)).float(), dim=-1))
        ys += [int(y) for _, y, _ in chunk]
    feats = torch.cat(feats)
    ys = torch.tensor(ys)
    logits = feats @ tf.T

    def acc(cls_ids: List[int]) -> Optional[float]:
        sel = torch.isin(ys, torch.tensor(cls_ids))
        if not sel.any():
            return None
        pred = torch.tensor(cls_ids)[logits[sel][:, cls_ids].argmax(1)]
        return round(100.0 * float((pred == ys[sel]).float().mean()), 2)

    base, novel = labels[:k], labels[k:]
    return {"dataset": meta.get("name", dataset_dir.name), "acc_base": acc(base), "acc_novel": acc(novel),
            "acc_all": acc(labels), "chance_base": round(100.0 / len(base), 2),
            "chance_novel": round(100.0 / len(novel), 2) if novel else None,
            "chance_all": round(100.0 / C, 2), "n_classes": C, "n_base": len(base), "n_novel": len(novel),
            "n_images_base": int(torch.isin(ys, torch.tensor(base)).sum()),
            "n_images_novel": int(torch.isin(ys, torch.tensor(novel)).sum()) if novel else 0}


def format_table(rows: List[dict]) -> str:
    """Plain-text table of ``zeroshot_accuracy`` results (+ mean row and x-chance columns)."""
    head = f"{'dataset':<20}{'C':>4}{'base':>8}{'chance':>8}{'x':>6}{'novel':>8}{'chance':>8}{'x':>6}{'all':>8}{'chance':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['dataset']:<20}{r['n_classes']:>4}{r['acc_base']:>8.1f}{r['chance_base']:>8.1f}"
                     f"{r['acc_base'] / r['chance_base']:>6.1f}{r['acc_novel']:>8.1f}{r['chance_novel']:>8.1f}"
                     f"{r['acc_novel'] / r['chance_novel']:>6.1f}{r['acc_all']:>8.1f}{r['chance_all']:>8.1f}")
    if rows:
        mb = np.mean([r["acc_base"] for r in rows])
        mn = np.mean([r["acc_novel"] for r in rows])
        hm = 2 * mb * mn / (mb + mn) if mb + mn > 0 else 0.0
        lines.append("-" * len(head))
        lines.append(f"{'mean':<20}{'':>4}{mb:>8.1f}{'':>8}{'':>6}{mn:>8.1f}   (HM of means {hm:.1f})")
    return "\n".join(lines)


def main(argv=None) -> None:
    from anchoropt.toy.datasets import make_toy11
    from anchoropt.toy.pretrain import DEFAULT_CKPT, load_toyclip

    ap = argparse.ArgumentParser(description="zero-shot table of ToyCLIP on the toy-11 datasets")
    ap.add_argument("--root", type=Path, required=True, help="data root (toy-11 written there if missing)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--seed", type=int, default=0, help="world seed for make_toy11")
    ap.add_argument("--part", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t = time.time()
    names = make_toy11(a.root, seed=a.seed)
    t_make = time.time() - t
    model, preprocess, tokenizer = load_toyclip(a.checkpoint)
    rows = [zeroshot_accuracy(model, preprocess, tokenizer, a.root / n, part=a.part) for n in names]
    print(f"checkpoint {a.checkpoint}, root {a.root} (make_toy11 {t_make:.1f}s), split '{a.part}'")
    print(format_table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
