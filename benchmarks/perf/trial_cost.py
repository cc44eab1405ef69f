"""Trial cost: the CoOp/Dassl-style reference loop against this project's trainer.

Both train AnchorOPT (two-stage) on the same few-shot data with the same initial
prompts, on one machine, in one run:

- reference: the image encoder runs on freshly augmented images every step, text
  sequences are the full 77 tokens, the frozen anchor-prompt logits are recomputed
  every step, and Stage I is recomputed for every trial;
- anchoropt: cached image features (precomputed views), sequences cut at EOS,
  anchor logits computed once, Stage I shared between trials (cached on disk).

Prints seconds per Stage II epoch, images per second, peak memory, their ratio,
Stage I cost per trial, final HM of both, and the share of the trainer's Stage II
time spent inside the text transformer (forward + backward).

Usage (random-init ViT-B-16, a generated 50-class dataset, 16 shots):
    python benchmarks/perf/trial_cost.py --backbone ViT-B-16 --classes 50
Toy CLIP on a toy dataset:
    python benchmarks/perf/trial_cost.py --backbone ToyCLIP --pretrained toy \
        --data-root data/toy11 --dataset toy_colour_shape
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
from anchoropt.config import load_config
from anchoropt.data import base_novel_labels, build_dataset, fewshot_splits, subsample
from anchoropt.data.images import load_image
from anchoropt.engine import Stepper, Trainer, seed_everything, steps_per_epoch
from anchoropt.methods import AnchorOPT
from anchoropt.prompts import AnchorPrompt, clip_logits, kd_loss, stage1_loss
from anchoropt.schedules import two_stage
from anchoropt.task import build_task
from anchoropt.text import ClassTokens
from anchoropt.train import cached_backbone


def make_dataset(root: Path, classes: int, shots: int, size: int) -> None:
    """A CoOp-format ``eurosat`` folder of noisy colour images, ``classes`` classes, with descriptions."""
    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(classes)]
    split = {}
    for part, n in (("train", shots), ("val", 1), ("test", 4)):
        split[part] = []
        for label, name in enumerate(names):
            colour = rng.integers(0, 256, 3)
            for i in range(n):
                rel = f"c{label}/{part}{i}.jpg"
                (root / "eurosat" / "2750" / f"c{label}").mkdir(parents=True, exist_ok=True)
                pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / "eurosat" / "2750" / rel, quality=90)
                split[part].append([rel, label, name])
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    (root / "descriptions.json").write_text(json.dumps(
        {n: [f"A photo of {n}, which looks like thing number {i}." for i in range(10)] for n in names}))


def reference_trial(cfg, backbone, device) -> dict:
    """Stage I then Stage II the way CoOp/Dassl trainers run them (see module docstring)."""
    data = build_dataset(cfg.data_root, cfg.dataset)
    train, _ = fewshot_splits(data, cfg.shots, cfg.seed)
    base, novel = base_novel_labels([d.label for d in data.train])
    items = subsample(train, base)
    classnames = [data.classnames[i] for i in base]
    seed_everything(cfg.seed)
    # The task (cached features) serves the final evaluation only; training below re-encodes images.
    trainer = Trainer(cfg, backbone, build_task(cfg, backbone, device), device)
    method = AnchorOPT(trainer)
    learner, anchor = method.prompt, method.anchor
    full = {}

    def tokens(names, n_block, rest):  # 77-token sequences, tokenised per call
        return ClassTokens.build(names, n_block, rest, backbone.tokenizer, backbone.model.token_embedding,
                                 truncate=False)

    start = time.perf_counter()
    stepper = Stepper.sgd([anchor.anchors], cfg.anchor_lr, cfg)
    targets = trainer.description_targets()
    for epoch in range(cfg.anchor_epochs):
        stepper.set_epoch(epoch, cfg.anchor_epochs, cfg)
        for _ in range(steps_per_epoch(len(items), cfg.anchor_batch_size)):  # one step per image batch, all classes
            pred = anchor(trainer.encoder, tokens(classnames, cfg.n_anchors, AnchorPrompt.rest))
            stepper.step(stage1_loss(pred, targets, cfg.mse_weight), trainer.scaler)
    full["stage1_s"] = time.perf_counter() - start

    prompt = Stepper.sgd(list(learner.parameters()), cfg.lr, cfg)
    augment = backbone.augment(cfg.crop_scale, cfg.flip)
    labels_all = torch.tensor([d.label for d in items])
    epoch_times = []
    for epoch in range(cfg.epochs):
        prompt.set_epoch(epoch, cfg.epochs, cfg)
        t0 = time.perf_counter()
        order = torch.randperm(len(items))
        for start_i in range(0, steps_per_epoch(len(items), cfg.batch_size) * cfg.batch_size, cfg.batch_size):
            idx = order[start_i:start_i + cfg.batch_size]
            images = torch.stack([augment(load_image(items[i].impath)) for i in idx]).to(device)
            with torch.no_grad():
                feats = backbone.model.encode_image(images)
            logits = clip_logits(feats, learner(trainer.encoder, tokens(classnames, learner.n_block, learner.rest),
                                                anchor.anchors), trainer.logit_scale)
            with torch.no_grad():
                logits_anchor = clip_logits(feats, anchor(trainer.encoder, tokens(classnames, cfg.n_anchors,
                                                                                    AnchorPrompt.rest)),
                                            trainer.logit_scale)
            loss = cfg.ce_weight * F.cross_entropy(logits, labels_all[idx].to(device)) + \
                cfg.kd_weight * kd_loss(logits, logits_anchor, cfg.kd_temperature)
            prompt.step(loss, trainer.scaler)
        epoch_times.append(time.perf_counter() - t0)
    full["epoch_s"] = float(np.median(epoch_times))
    full["images"] = len(items)
    full.update(trainer.evaluate(method))
    return full


def project_trial(cfg, backbone, device) -> dict:
    """This project's trainer, timed per phase; Stage I of a second trial comes from the cache."""
    out = {}
    t0 = time.perf_counter()
    task = build_task(cfg, backbone, device)
    out["features_s"] = time.perf_counter() - t0
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, backbone, task, device)
    method = AnchorOPT(trainer)
    t0 = time.perf_counter()
    method.fit_anchors()
    out["stage1_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    AnchorOPT(trainer).fit_anchors()
    out["stage1_shared_s"] = time.perf_counter() - t0
    epoch_times = []
    last = [time.perf_counter()]

    def on_epoch(epoch, info):
        now = time.perf_counter()
        epoch_times.append(now - last[0])
        last[0] = now
    method.train()
    two_stage(method, on_epoch)
    out["epoch_s"] = float(np.median(epoch_times))
    out["images"] = len(task.train_labels)
    out["text_share"] = text_transformer_share(trainer, method.prompt, out["epoch_s"])
    out.update(trainer.evaluate(method))
    return out


def text_transformer_share(trainer, learner, epoch_s: float) -> float:
    """Time of the bare text transformer forward + backward on one epoch's prompts, over the epoch time."""
    tokens = trainer.tokens(trainer.task.classnames, learner.n_block, learner.rest)
    steps = sum(1 for _ in trainer.image_batches(0))
    seq = tokens.assemble(learner.ctx.detach().new_zeros(learner.n_block, trainer.width)).detach()
    seq.requires_grad_(True)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.encoder(seq, tokens.eos_index).sum().backward()
    return (time.perf_counter() - t0) / epoch_s


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, args) -> dict:
    cfg = load_config(overrides=dict(
        dataset=args.dataset, data_root=args.data_root, backbone=args.backbone, pretrained=args.pretrained,
        descriptions=args.descriptions, cache_dir=args.cache_dir, shots=args.shots, epochs=args.epochs,
        anchor_epochs=args.anchor_epochs, device=args.device, train_views=args.views, warmup_epochs=0))
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = (reference_trial if kind == "reference" else project_trial)(cfg, backbone, device)
    result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
    gc.collect()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--classes", type=int, default=50, help="classes of the generated dataset")
    parser.add_argument("--data-root", help="use an existing data root instead of generating one")
    parser.add_argument("--dataset", default="eurosat")
    parser.add_argument("--descriptions", default="")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--anchor-epochs", type=int, default=5)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=["reference", "anchoropt"], help="run one side (child process)")
    parser.add_argument("--cache-dir", help="feature/Stage I cache of a child run")
    args = parser.parse_args(argv)
    if args.only:  # child: one side, in a fresh process so that peak memory is its own
        print(json.dumps(run_one(args.only, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root is None:
            args.data_root = str(Path(tmp) / "data")
            make_dataset(Path(args.data_root), args.classes, args.shots, 224 if args.backbone != "ToyCLIP" else 64)
            args.descriptions = str(Path(args.data_root) / "descriptions.json")
        results = {}
        for kind in ("anchoropt", "reference"):
            # One feature cache for both: the reference only reads it for its final evaluation.
            child = [sys.executable, __file__, "--only", kind, "--cache-dir", str(Path(tmp) / "cache")] + \
                [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("only", "cache_dir") and v is not None]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{kind} run failed: {done.stderr.strip().splitlines()[-1]}")
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    report(results, args)


def report(results: dict, args) -> None:
    ours, ref = results["anchoropt"], results["reference"]
    print(f"backbone {args.backbone} ({args.pretrained}), dataset {args.dataset}, {args.shots} shots, "
          f"{ours['images']} training images, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'':24}{'reference':>12}{'anchoropt':>12}{'ratio':>9}")
    rows = [("Stage II s/epoch", ref["epoch_s"], ours["epoch_s"]),
            ("images/s", ref["images"] / ref["epoch_s"], ours["images"] / ours["epoch_s"]),
            ("Stage I s/trial", ref["stage1_s"], ours["stage1_shared_s"]),
            ("peak memory MB (process)", ref["peak_mb"], ours["peak_mb"])]
    for name, r, o in rows:
        ratio = r / o if name != "images/s" else o / r
        print(f"{name:24}{r:12.3f}{o:12.4f}{ratio:8.1f}x")
    print(f"{'first Stage I s':24}{ref['stage1_s']:12.3f}{ours['stage1_s']:12.3f}")
    print(f"{'feature cache s (once)':24}{'':12}{ours['features_s']:12.3f}")
    print(f"{'final base/novel/HM':24}{ref['acc_base']:5.1f}/{ref['acc_novel']:4.1f}/{ref['hm']:4.1f}"
          f"  {ours['acc_base']:5.1f}/{ours['acc_novel']:4.1f}/{ours['hm']:4.1f}")
    print(f"text transformer share of trainer Stage II time: {100 * ours['text_share']:.1f}%")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
