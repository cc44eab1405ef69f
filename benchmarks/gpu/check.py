"""One-call GPU check (run through ``benchmarks/gpu/check.sh``): the CUDA paths no CPU machine runs.

Checks, on a random-init backbone (default ViT-B-16, no weights to download) and one generated
toy dataset (``toy_shape``, 2 shots), and prints one table row each:

- ``train <method>``: every method of the matrix (CoOp, CoCoOp, MaPLe, DePT, each vanilla,
  +ATPrompt and +AnchorOPT, and zero-shot) trains a few steps on CUDA under fp16 autocast
  (1 epoch, 1 Stage I epoch) and scores finite accuracies; its wall time and peak GPU memory.
- ``fp16 vs fp32 logits``: image features and CoOp's text features of the same batch under fp16
  autocast and in fp32; the largest logit difference over the logit scale (i.e. in cosine
  similarity) must be at most ``--fp16-tolerance`` (default 5e-3: fp16 keeps about 3 decimal
  digits through 12 layers), and the top-1 class of every image must agree where the fp32 margin
  exceeds twice that. (``--device cpu``: bfloat16 autocast, 2 fewer mantissa bits, so 4 times
  the tolerance.)
- ``search 4 x 0.25 GPU``: ``anchoropt search`` with 4 trials, ``--gpus-per-trial 0.25
  --max-concurrent 4``; passes when all 4 complete and all 4 were running at once (from the
  trials' start and end times in ``results.jsonl``).
- ``stage II <method> <C> classes``: steps/s and images/s of the trainer's Stage II loop (CoOp's
  loop for CoOp) at C = 100 and 1000 classes, batch 32, on synthetic cached features (the trainer
  reads cached features, so images do not enter its step time); the second epoch is timed.
- peak GPU memory (``torch.cuda.max_memory_allocated``) of every row that runs in this process.

Exit status 1 when any row fails, else 0. Without CUDA it prints one line and exits 0. ``--device
cpu --backbone ToyCLIP-ViT --prompt-depth 3`` runs the same checks on the CPU (the search with CPU fractions
instead of GPU ones), to try the script itself.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))


@dataclass
class Row:
    check: str
    ok: bool
    figure: str
    seconds: float
    peak_mib: float | None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to try the script)")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="Stage II throughput classes")
    parser.add_argument("--prompt-depth", type=int, default=9,
                        help="MaPLe's prompt depth (default 9, the reference's; at most the towers' layers)")
    parser.add_argument("--fp16-tolerance", type=float, default=5e-3,
                        help="largest |logit difference| / logit scale allowed between fp16 autocast and fp32")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
        print(f"benchmarks/gpu/check.sh: skipped, no CUDA device (torch {torch.__version__} is {build})")
        return 0
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"GPU check on {card}: backbone {args.backbone} (random init), torch {torch.__version__}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        from anchoropt.toy.datasets import make_toy11

        make_toy11(Path(tmp) / "data", names=["toy_shape"])
        base = dict(dataset="toy_shape", data_root=str(Path(tmp) / "data"), backbone=args.backbone, pretrained="none",
                    cache_dir=str(Path(tmp) / "cache"), shots=2, epochs=1, anchor_epochs=1, train_views=1,
                    batch_size=8, anchor_batch_size=8, warmup_epochs=0, prompt_depth=args.prompt_depth,
                    device=args.device)
        from anchoropt.methods import METHODS

        for method in METHODS:
            rows.append(_timed(f"train {method}", device, lambda m=method: _train(base, m)))
        rows.append(_timed("fp16 vs fp32 logits", device, lambda: _fp16_vs_fp32(base, device, args.fp16_tolerance)))
        rows.append(_timed("search 4 x 0.25 GPU" if device.type == "cuda" else "search 4 x 0.5 CPU", None,
                           lambda: _search(base, Path(tmp), device)))
        for classes in args.classes:
            for method in ("coop", "anchoropt"):
                rows.append(_timed(f"stage II {method} {classes} classes", device,
                                   lambda m=method, c=classes: _stage2_throughput(base, m, c, device)))
    _print_table(rows, card)
    return 0 if all(r.ok for r in rows) else 1


def _timed(check: str, device: torch.device | None, run) -> Row:
    """Run one check: ``run()`` returns (ok, figure); an exception fails the row with its last line."""
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        ok, figure = run()
    except Exception as err:  # noqa: BLE001  (a failed check is a table row, the others still run)
        traceback.print_exc(file=sys.stderr)
        ok, figure = False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:100]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device is not None and device.type == "cuda" else None
    row = Row(check, ok, figure, time.perf_counter() - start, peak)
    print(f"  {'ok  ' if ok else 'FAIL'} {check}: {figure}", flush=True)
    return row


def _train(base: dict, method: str) -> tuple[bool, str]:
    from anchoropt.config import load_config
    from anchoropt.train import train

    record = train(load_config(overrides={**base, "method": method}))
    metrics = record["metrics"]
    ok = all(math.isfinite(metrics[k]) for k in ("acc_base", "acc_novel", "hm"))
    updates = ", ".join(f"{k} {v}" for k, v in record["training"].get("updates", {}).items()) or "no updates"
    return ok, f"HM {metrics['hm']:.1f} ({updates})"


@torch.no_grad()
def _fp16_vs_fp32(base: dict, device: torch.device, tolerance: float) -> tuple[bool, str]:
    """CoOp logits of one batch (16 images x 24 classes) under fp16 autocast and in fp32."""
    from anchoropt.config import load_config
    from anchoropt.engine import Trainer, stream_generator
    from anchoropt.prompts import CoOpPrompt, clip_logits, normal_init
    from anchoropt.task import build_task
    from anchoropt.train import cached_backbone

    if device.type != "cuda":
        tolerance *= 4  # CPU autocast is bfloat16: 8 mantissa bits against fp16's 10
    cfg = load_config(overrides={**base, "method": "coop"})
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    trainer = Trainer(cfg, backbone, build_task(cfg, backbone, device), device)
    images = torch.randn(16, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    prompt = CoOpPrompt(normal_init(cfg.n_ctx, trainer.width, stream_generator(0, "soft_tokens"))).to(device)
    tokens = trainer.tokens(trainer.task.classnames, prompt.n_block, prompt.rest)

    def logits(half: bool) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                            enabled=half):
            feats = backbone.model.encode_image(images.to(device)).float()
            return clip_logits(feats, prompt(trainer.encoder, tokens).float(), trainer.logit_scale).float()

    full, half = logits(False), logits(True)
    scale = trainer.logit_scale.exp().item()
    worst = (full - half).abs().max().item() / scale
    top2 = full.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) / scale > 2 * tolerance
    agree = (full.argmax(-1) == half.argmax(-1))[clear].float().mean().item() if clear.any() else 1.0
    ok = worst <= tolerance and agree == 1.0
    return ok, f"max abs dlogit / scale {worst:.1e} (tolerance {tolerance:g}), top-1 agree {100 * agree:.0f}% " \
               f"of {int(clear.sum())} clear images"


def _search(base: dict, tmp: Path, device: torch.device) -> tuple[bool, str]:
    """``anchoropt search`` with 4 trials sharing one GPU (0.25 each); the trials' overlap."""
    out = tmp / "search"
    share = ["--gpus-per-trial", "0.25", "--cpus-per-trial", "1"] if device.type == "cuda" else \
        ["--gpus-per-trial", "0", "--cpus-per-trial", "0.5", "--num-cpus", "2"]
    overrides = [f"{k}={v}" for k, v in {**base, "epochs": 3, "anchor_epochs": 2}.items()]
    command = [sys.executable, "-m", "anchoropt", "search", "--space", str(ROOT / "search_spaces" / "anchors.yaml"),
               "--num-trials", "4", "--max-concurrent", "4", "--scheduler", "none", "--out", str(out), *share,
               *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        return False, f"anchoropt search exit {done.returncode}: {' '.join(tail)[:80]}"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    complete = sum(r.get("status") == "complete" for r in rows)
    spans = [(r["started_at"], r["finished_at"]) for r in rows]
    concurrent = max(sum(s <= t < e for s, e in spans) for t, _ in spans) if spans else 0
    ok = complete == 4 and concurrent == 4
    return ok, f"{complete}/4 complete, {concurrent} running at once, wall {max(e for _, e in spans) - min(s for s, _ in spans):.0f} s"


def _stage2_throughput(base: dict, method: str, classes: int, device: torch.device) -> tuple[bool, str]:
    """Stage II (CoOp: its loop) of the trainer on synthetic cached features of ``classes`` classes;
    epochs of at least 20 steps, the second timed."""
    from stage2_step import class_names

    from anchoropt.config import load_config
    from anchoropt.engine import Trainer
    from anchoropt.methods import build_method
    from anchoropt.task import Task
    from anchoropt.train import cached_backbone

    batch = 32
    per_class = max(1, math.ceil(20 * batch / classes))
    cfg = load_config(overrides={**base, "method": method, "epochs": 2, "batch_size": batch,
                                 "anchor_source": "random" if method == "anchoropt" else "stage1"})
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    dim = backbone.model.text_projection.shape[-1]
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    task = Task("synthetic", class_names(classes), torch.randn(len(labels), 1, dim, generator=gen), labels, {}, None)
    trainer = Trainer(cfg, backbone, task, device)
    method_obj = build_method(trainer)
    times = []

    def on_epoch(epoch: int, info: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter())
    method_obj.train()
    times.append(time.perf_counter())
    method_obj.fit(on_epoch)
    epoch_s = times[-1] - times[-2]
    steps = trainer.steps_per_epoch
    ok = math.isfinite(epoch_s) and steps > 0
    return ok, f"{steps / epoch_s:.1f} steps/s, {steps * batch / epoch_s:.0f} images/s ({steps} steps/epoch)"


def _print_table(rows: list[Row], card: str) -> None:
    header = ("check", "result", "figure", "s", "peak GPU MiB")
    body = [(r.check, "ok" if r.ok else "FAIL", r.figure, f"{r.seconds:.1f}",
             "-" if r.peak_mib is None else f"{r.peak_mib:.0f}") for r in rows]
    widths = [max(len(str(x[i])) for x in (header, *body)) for i in range(len(header))]
    print(f"\n{card}: {sum(r.ok for r in rows)} of {len(rows)} checks passed, {sum(r.seconds for r in rows):.0f} s")
    for line in (header, tuple("-" * w for w in widths), *body):
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |")


if __name__ == "__main__":
    sys.exit(main())
