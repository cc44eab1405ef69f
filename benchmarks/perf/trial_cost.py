"""Trial cost: the CoOp/Dassl-style reference loop against this project's trainer.

Both train AnchorOPT (two-stage) on the same few-shot data with the same initial
prompts, on one machine, in one run:

- reference: models the costs of the authors' trainers (trainers/coop_pretrain_anchor.py for
  Stage I, trainers/coop_anchoropt.py for Stage II):
  Stage I takes one step per image batch (drop_last); each step loads and augments the batch
  and runs the image encoder (its output is not in the loss), encodes every class's anchor
  prompt at the full 77 tokens, and back-propagates with ``retain_graph=True`` also through the
  description targets, which a second, trainable CLIP copy encoded once *with* autograd (no
  ``no_grad``): every step computes that copy's text-tower weight gradients and the graph stays
  in memory. Stage II re-encodes freshly augmented images every step, runs 77-token
  sequences and recomputes the frozen anchor-prompt logits every step; Stage I is recomputed
  for every trial;
- anchoropt: cached image features (precomputed views), sequences cut at EOS, the shared
  prefix encoded once per step, anchor logits computed once, Stage I shared between trials
  (cached on disk).

Each side runs in its own child process (peak memory is its own), alternating A B A B for
``--rounds`` rounds; every figure is the median over rounds, with the spread (min-max). Prints
Stage II s/epoch, images/s, Stage I s/update and s/epoch (updates only), the description targets'
encoding (each side's one-off, on its own row), a fresh Stage I (targets and updates) and Stage I
per trial (ours: read from the cache), peak memory, their ratios at the printed class count, final HM and the share of the trainer's Stage II time inside the text transformer, and
the load average (os.getloadavg) at start and end.

``--method A B ...`` instead times trials of this project's trainer for each named method (e.g.
``maple coop``: MaPLe prompts the image tower, so it trains on pixels while CoOp reads cached
features), interleaved A B A B, each in its own child process, all with the same settings
(``--epochs``, ``--batch-size``, ``--prompt-depth``...): per method the median s/epoch, training
images/s, evaluation s (base + novel), the whole trial s (features encoded into a cold cache),
the features' share and the trial without it (a search's later trials read the cache), peak
memory, and each figure's ratio to the first method's.

Usage (random-init ViT-B-16, a generated 50-class dataset, 16 shots):
    python benchmarks/perf/trial_cost.py --backbone ViT-B-16 --classes 50
Pets' 37 class names and CuPL descriptions (19 base classes trained), few steps:
    python benchmarks/perf/trial_cost.py --backbone ViT-B-16 --classes 37 \
        --cupl ../shared/data/cupl/pets_prompts_full.json --shots 2 --epochs 1 --anchor-epochs 2 --views 1
MaPLe against CoOp on the toy ViT (random init), 3 interleaved rounds:
    python benchmarks/perf/trial_cost.py --method coop maple --backbone ToyCLIP-ViT --classes 10 \
        --epochs 2 --batch-size 4 --prompt-depth 3
Toy CLIP on a toy dataset:
    python benchmarks/perf/trial_cost.py --backbone ToyCLIP --pretrained toy \
        --data-root data/toy11 --dataset toy_colour_shape
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
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
from anchoropt.methods import AnchorOPT, build_method
from anchoropt.prompts import AnchorPrompt, clip_logits, kd_loss, stage1_loss
from anchoropt.schedules import two_stage
from anchoropt.task import build_task
from anchoropt.text import ClassTokens
from anchoropt.train import cached_backbone


def make_dataset(root: Path, classes: int, shots: int, size: int, cupl: str = "") -> None:
    """A CoOp-format ``eurosat`` folder of noisy colour images, ``classes`` classes, with descriptions:
    generated ones, or with ``cupl`` (a CuPL JSON) its first classes' names and real descriptions."""
    rng = np.random.default_rng(0)
    real = json.loads(Path(cupl).read_text()) if cupl else {}
    names = list(real)[:classes] if real else [f"class {i}" for i in range(classes)]
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
        {n: real[n] if real else [f"A photo of {n}, which looks like thing number {i}." for i in range(10)]
         for n in names}))


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
    trainer.encoder.share_prefix = False  # the reference encodes every class's full prompt
    full = {}

    def tokens(names, n_block, rest):  # 77-token sequences, tokenised per call
        return ClassTokens.build(names, n_block, rest, backbone.tokenizer, backbone.model.token_embedding,
                                 truncate=False)

    augment = backbone.augment(cfg.crop_scale, cfg.flip)
    start = time.perf_counter()
    stepper = Stepper.sgd([anchor.anchors], cfg.anchor_lr, cfg)
    targets = reference_description_targets(trainer, backbone, device)
    full["targets_s"] = time.perf_counter() - start
    stage1_epochs = []
    for epoch in range(cfg.anchor_epochs):
        stepper.set_epoch(epoch, cfg.anchor_epochs, cfg)
        t0 = time.perf_counter()
        order = torch.randperm(len(items))
        for b in range(steps_per_epoch(len(items), cfg.anchor_batch_size)):  # one step per image batch
            idx = order[b * cfg.anchor_batch_size:(b + 1) * cfg.anchor_batch_size]
            images = torch.stack([augment(load_image(items[i].impath)) for i in idx]).to(device)
            backbone.model.encode_image(images)  # the reference's forward runs it; the MSE does not use it
            pred = anchor(trainer.encoder, tokens(classnames, cfg.n_anchors, AnchorPrompt.rest))
            stepper.optimizer.zero_grad()
            stage1_loss(pred, targets, cfg.mse_weight).backward(retain_graph=True)
            stepper.optimizer.step()
            stepper.updates += 1
        stage1_epochs.append(time.perf_counter() - t0)
    full["stage1_s"] = time.perf_counter() - start  # a fresh Stage I: targets and updates
    full["stage1_epoch_s"] = float(np.median(stage1_epochs))
    full["stage1_update_s"] = sum(stage1_epochs) / max(stepper.updates, 1)
    full["classes"] = len(classnames)
    del targets

    prompt = Stepper.sgd(list(learner.parameters()), cfg.lr, cfg)
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


def reference_description_targets(trainer, backbone, device) -> torch.Tensor:
    """Description targets ``[C, n_desc, D]`` as the reference builds them: per class, by a second
    CLIP copy whose parameters require gradients, without ``no_grad``, so the tensor carries the
    description encoder's autograd graph (77-token sequences)."""
    copy_model = copy.deepcopy(backbone.model).requires_grad_(True)
    sentences = trainer.stage1_descriptions()
    feats = [F.normalize(copy_model.encode_text(backbone.tokenizer(per_class).to(device)).float(), dim=-1)
             for per_class in sentences]
    return torch.stack(feats)


def project_trial(cfg, backbone, device) -> dict:
    """This project's trainer, timed per phase; Stage I of a second trial comes from the cache."""
    out = {}
    t0 = time.perf_counter()
    task = build_task(cfg, backbone, device)
    out["features_s"] = time.perf_counter() - t0
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, backbone, task, device)
    method = AnchorOPT(trainer)
    encode_targets, spent = trainer.description_targets, [0.0]

    def timed_targets():  # the targets' one-off timed apart, as the reference's
        t = time.perf_counter()
        try:
            return encode_targets()
        finally:
            spent[0] += time.perf_counter() - t
    trainer.description_targets = timed_targets
    t0 = time.perf_counter()
    method.fit_anchors()
    out["stage1_s"] = time.perf_counter() - t0  # a fresh Stage I: targets and updates
    out["targets_s"] = spent[0]
    out["stage1_epoch_s"] = (out["stage1_s"] - spent[0]) / max(cfg.anchor_epochs, 1)
    out["stage1_update_s"] = (out["stage1_s"] - spent[0]) / max(method.stage1_updates, 1)
    out["classes"] = len(task.classnames)
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
    """Time of the bare text transformer forward + backward (the trainer's path) on one epoch's prompts,
    over the epoch time."""
    tokens = trainer.tokens(trainer.task.classnames, learner.n_block, learner.rest)
    steps = sum(1 for _ in trainer.image_batches(0))
    block = learner.ctx.detach().new_zeros(learner.n_block, trainer.width).requires_grad_(True)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.encoder.encode(tokens, block).sum().backward()
    return (time.perf_counter() - t0) / epoch_s


def method_trial(cfg, backbone, device) -> dict:
    """One trial of ``cfg.method`` with this project's trainer (task, training, evaluation), timed."""
    start = time.perf_counter()
    task = build_task(cfg, backbone, device)
    out = {"features_s": time.perf_counter() - start}
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, backbone, task, device)
    method = build_method(trainer)
    epoch_times, last = [], [time.perf_counter()]

    def on_epoch(epoch, info):
        now = time.perf_counter()
        if info["phase"] != "stage1":
            epoch_times.append(now - last[0])
        last[0] = now
    method.fit(on_epoch)
    t0 = time.perf_counter()
    out.update(trainer.evaluate(method))
    out["eval_s"] = time.perf_counter() - t0
    out["trial_s"] = time.perf_counter() - start
    out["train_eval_s"] = out["trial_s"] - out["features_s"]
    out["epoch_s"] = float(np.median(epoch_times))
    out["images_per_s"] = trainer.steps_per_epoch * min(cfg.batch_size, len(task.train_labels)) / out["epoch_s"]
    out["images"] = len(task.train_labels)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, args, method: str = "anchoropt") -> dict:
    """One child's trial: ``kind`` reference or anchoropt (the two loops), or ``method`` (``--method``)."""
    cfg = load_config(overrides=dict(
        dataset=args.dataset, data_root=args.data_root, backbone=args.backbone, pretrained=args.pretrained,
        descriptions=args.descriptions, cache_dir=args.cache_dir, shots=args.shots, epochs=args.epochs,
        anchor_epochs=args.anchor_epochs, device=args.device, train_views=args.views, warmup_epochs=0,
        batch_size=args.batch_size, prompt_depth=args.prompt_depth, method=method))
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trial = {"reference": reference_trial, "anchoropt": project_trial, "method": method_trial}[kind]
    result = trial(cfg, backbone, device)
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
    parser.add_argument("--cupl", default="", help="generated dataset: class names and descriptions from this "
                        "CuPL JSON (e.g. ../shared/data/cupl/pets_prompts_full.json: real sentence lengths)")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--anchor-epochs", type=int, default=5)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-depth", type=int, default=9, help="MaPLe's J (at most the towers' layers)")
    parser.add_argument("--method", nargs="+", help="time these methods' trials instead (trainer only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (A B A B ...)")
    parser.add_argument("--only", choices=["reference", "anchoropt"], help="run one side (child process)")
    parser.add_argument("--only-method", help="run one method's trial (child process of --method)")
    parser.add_argument("--cache-dir", help="feature/Stage I cache of a child run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of both sides (0: torch's default); 1 avoids waiting on a "
                             "descheduled second thread at every op when the machine is oversubscribed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only or args.only_method:  # child: one side, in a fresh process so that peak memory is its own
        result = run_one(args.only, args) if args.only else run_one("method", args, args.only_method)
        print(json.dumps(result))
        return
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_root is None:
            args.data_root = str(Path(tmp) / "data")
            size = 64 if args.backbone.startswith("ToyCLIP") else 224
            make_dataset(Path(args.data_root), args.classes, args.shots, size, args.cupl)
            args.descriptions = str(Path(args.data_root) / "descriptions.json")
        sides = [("--only-method", m) for m in args.method] if args.method else [("--only", "anchoropt"),
                                                                                  ("--only", "reference")]
        results = {name: [] for _, name in sides}
        for round_ in range(args.rounds):
            for flag, name in sides:  # A B A B: both sides see the same machine load
                # One feature cache per round for both (the reference only reads it for its final
                # evaluation); a fresh one per round so each round pays the project's first Stage I.
                # Methods each get their own, so each pays its features once.
                cache = Path(tmp) / (f"cache{round_}" + (f"-{name}" if args.method else ""))
                child = [sys.executable, __file__, flag, name, "--cache-dir", str(cache)] + \
                    [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k not in ("only", "only_method", "method", "cache_dir", "rounds") and v is not None]
                done = subprocess.run(child, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{name} run failed: {done.stderr.strip().splitlines()[-1]}")
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    (report_methods if args.method else report)(results, args, load_start)


def report_methods(results: dict, args, load_start: float) -> None:
    """Per method the median over rounds of each figure, its spread, and its ratio to the first method."""
    first = next(iter(results))
    print(f"backbone {args.backbone} ({args.pretrained}), dataset {args.dataset}, {args.shots} shots, "
          f"{results[first][0]['images']} training images, {args.epochs} epochs, batch {args.batch_size}, "
          f"device {args.device}, {args.rounds} interleaved rounds (median [min-max], ratio to {first})")
    rows = [("s/epoch", "epoch_s"), ("training images/s", "images_per_s"), ("evaluation s", "eval_s"),
            ("trial s", "trial_s"), ("features s (cold cache)", "features_s"),
            ("trial s, features cached", "train_eval_s"), ("peak memory MB", "peak_mb")]
    for label, key in rows:
        base = float(np.median([r[key] for r in results[first]]))
        cells = []
        for name, runs in results.items():
            values = [r[key] for r in runs]
            m = float(np.median(values))
            cells.append(f"{name} {m:.3f} [{min(values):.3f}-{max(values):.3f}] {m / base:.1f}x")
        print(f"{label:26}" + "   ".join(cells))
    for name, runs in results.items():
        print(f"final base/novel/HM {name}: " + ", ".join(
            f"{r['acc_base']:.1f}/{r['acc_novel']:.1f}/{r['hm']:.1f}" for r in runs))
    print(f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    sys.stdout.flush()


def report(results: dict, args, load_start: float) -> None:
    """Median over rounds of each figure, its spread, and the ratio of medians."""
    ours, ref = results["anchoropt"], results["reference"]

    def med(runs, key):
        values = [r[key] for r in runs]
        return float(np.median(values)), min(values), max(values)

    print(f"backbone {args.backbone} ({args.pretrained}), dataset {args.dataset}, {ours[0]['classes']} training "
          f"classes (every ratio below is at this class count: both sides' text cost grows with it), {args.shots} "
          f"shots, {ours[0]['images']} training images, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds (median [min-max])")
    print(f"{'':26}{'reference':>26}{'anchoropt':>28}{'ratio':>8}")
    for r in ours + ref:
        r["images_per_s"] = r["images"] / r["epoch_s"]
    rows = [("Stage II s/epoch", "epoch_s", "epoch_s"), ("Stage II images/s", "images_per_s", "images_per_s"),
            ("Stage I s/update", "stage1_update_s", "stage1_update_s"),
            ("Stage I s/epoch", "stage1_epoch_s", "stage1_epoch_s"),
            ("description targets s", "targets_s", "targets_s"),
            ("fresh Stage I s", "stage1_s", "stage1_s"),
            ("Stage I s/trial (shared)", "stage1_s", "stage1_shared_s"),
            ("peak memory MB (process)", "peak_mb", "peak_mb")]
    for name, ref_key, our_key in rows:
        (r, rlo, rhi), (o, olo, ohi) = med(ref, ref_key), med(ours, our_key)
        ratio = o / r if ref_key == "images_per_s" else r / o
        print(f"{name:26}{r:12.4f} [{rlo:.4f}-{rhi:.4f}]{o:12.4f} [{olo:.4f}-{ohi:.4f}]{ratio:7.1f}x")
    print(f"{'feature cache s (once)':26}{'':26}{med(ours, 'features_s')[0]:12.3f}")
    for label, runs in (("reference", ref), ("anchoropt", ours)):
        print(f"final base/novel/HM {label}: " + ", ".join(
            f"{r['acc_base']:.1f}/{r['acc_novel']:.1f}/{r['hm']:.1f}" for r in runs))
    print(f"text transformer share of trainer Stage II time: {100 * med(ours, 'text_share')[0]:.1f}%")
    print(f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
