"""Stage I's description targets: uncut (open_clip ``encode_text``, 77 positions, batches of 256, as
this trainer did before and the reference does) against cut at each sentence's EOS and batched by
length (:func:`anchoropt.text.encode_token_ids`, what :meth:`anchoropt.engine.Trainer.description_targets`
runs), interleaved A B A B in one process.

Prints per round the CPU seconds (``time.process_time``: what the encoding costs, little affected by
other processes on a loaded machine) and the wall seconds of each side, their medians and ratio, the
positions each side runs, and the largest absolute difference of the features (exact to rounding).

    python benchmarks/perf/description_targets.py --backbone ViT-B-16 \
        --cupl ../shared/data/cupl/pets_prompts_full.json --classes 19 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anchoropt.backbone import create_backbone  # noqa: E402
from anchoropt.text import TextEncoder, encode_token_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--cupl", required=True, help="CuPL JSON: class -> sentences")
    ap.add_argument("--classes", type=int, default=19, help="first classes of the file (e.g. Pets' 19 base classes)")
    ap.add_argument("--n-descriptions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    backbone = create_backbone(args.backbone, args.pretrained)
    cupl = json.loads(Path(args.cupl).read_text())
    sentences = [s for name in list(cupl)[:args.classes] for s in cupl[name][:args.n_descriptions]]
    tokens = backbone.tokenizer(sentences)
    encoder = TextEncoder(backbone.model)
    sides = {"uncut": lambda: torch.cat([backbone.model.encode_text(t) for t in tokens.split(256)]).float(),
             "cut": lambda: encode_token_ids(encoder, tokens).float()}
    times, outputs = {k: [] for k in sides}, {}
    with torch.no_grad():
        for r in range(args.rounds):
            for name, fn in sides.items():
                cpu, wall = time.process_time(), time.time()
                outputs[name] = fn()
                times[name].append((time.process_time() - cpu, time.time() - wall))
                print(f"round {r + 1} {name:6} cpu {times[name][-1][0]:7.2f} s  wall {times[name][-1][1]:7.1f} s",
                      flush=True)
    eos = tokens.argmax(-1).sort().values
    positions = {"uncut": tokens.numel(), "cut": sum((int(c.max()) + 1) * len(c) for c in eos.split(32))}
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    print(f"{args.backbone} ({args.pretrained}), {len(sentences)} sentences ({args.classes} classes x "
          f"{args.n_descriptions}), longest EOS {int(eos.max())}, mean {eos.float().mean():.1f}, {args.threads} thread(s)")
    for k in sides:
        print(f"{k:6} median cpu {med[k][0]:7.2f} s  wall {med[k][1]:7.1f} s  positions {positions[k]}")
    print(f"ratio uncut/cut: cpu {med['uncut'][0] / med['cut'][0]:.2f}x, wall {med['uncut'][1] / med['cut'][1]:.2f}x; "
          f"max |cut - uncut| {(outputs['cut'] - outputs['uncut']).abs().max().item():.2e}")
    print(f"load average at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
