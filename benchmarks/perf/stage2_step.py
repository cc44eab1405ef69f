"""Seconds per Stage II step (text forward + backward over every class prompt, CE loss, SGD
update), comparing two encoder settings interleaved in one process: prefix sharing off/on
(``--compare share``, default) or sequences full/cut at EOS (``--compare truncate``).

The sides run A B A B ... for ``--rounds`` rounds of ``--steps`` steps each (after one warm-up
step per side), so machine load hits both alike; it prints per side the median and the spread
(min-max) of the per-round medians, s/epoch at 16 shots of every class (``floor(16 C / 32)``
steps, Dassl's drop_last), the speed-up (ratio of medians) and the load average (os.getloadavg)
at start and end. Class names are 1-3 words drawn (seeded) from a fixed word list, so they share
no leading tokens.

Usage (random-init ViT-B-16, 50 and 500 classes, CPU):
    python benchmarks/perf/stage2_step.py --backbone ViT-B-16 --classes 50 500 --rounds 3 --steps 1
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

from anchoropt.backbone import create_backbone
from anchoropt.engine import steps_per_epoch, stream_generator
from anchoropt.prompts import AnchorOPTPrompt, CoOpPrompt, clip_logits, normal_init
from anchoropt.text import ClassTokens, TextEncoder

WORDS = ("red oak maple harbor canyon violet tiger lantern marble spiral velvet falcon meadow copper "
         "glacier orchid basalt thistle ember willow coral dune prairie heron quartz saffron tundra "
         "juniper cobalt lagoon sparrow granite fern bison amber cypress mango walnut").split()
SHOTS, BATCH = 16, 32


def class_names(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct names of 1-3 words from :data:`WORDS`."""
    rng, names = random.Random(seed), []
    while len(names) < n:
        name = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        if name not in names:
            names.append(name)
    return names


class Side:
    """One setting's Stage II step: a learner, its encoder and an optimiser."""

    def __init__(self, backbone, names: list[str], method: str, truncate: bool, share_prefix: bool):
        width = backbone.model.token_embedding.weight.shape[1]
        self.encoder = TextEncoder(backbone.model, share_prefix)
        if method == "coop":  # CoOp with 16 soft tokens
            self.learner, self.extra = CoOpPrompt(normal_init(16, width, stream_generator(0, "soft_tokens"))), ()
        else:  # AnchorOPT Stage II: 4 soft tokens + 1 anchor, W learned
            self.learner = AnchorOPTPrompt(normal_init(4, width, stream_generator(0, "soft_tokens")),
                                           torch.randn(5, 5), stream_generator(0, "gumbel"))
            self.extra = (torch.randn(1, width) * 0.02,)
        self.tokens = ClassTokens.build(names, self.learner.n_block, self.learner.rest, backbone.tokenizer,
                                        backbone.model.token_embedding, truncate)
        self.length = self.tokens.suffix.shape[1] + 1 + self.tokens.n_block
        self.images = torch.randn(BATCH, backbone.model.text_projection.shape[-1])
        self.labels = torch.randint(len(names), (BATCH,), generator=torch.Generator().manual_seed(0))
        self.optimizer = torch.optim.SGD(self.learner.parameters(), lr=0.002, momentum=0.9)
        self.logit_scale = backbone.model.logit_scale.detach()

    def step(self) -> float:
        t0 = time.perf_counter()
        text = self.learner(self.encoder, self.tokens, *self.extra)
        loss = F.cross_entropy(clip_logits(self.images, text, self.logit_scale), self.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - t0


def compare(backbone, classes: int, method: str, sides: dict[str, dict], rounds: int, steps: int) -> None:
    names = class_names(classes)
    runs = {label: Side(backbone, names, method, **kw) for label, kw in sides.items()}
    for side in runs.values():
        side.step()  # warm-up
    medians = {label: [] for label in runs}
    for _ in range(rounds):
        for label, side in runs.items():
            medians[label].append(statistics.median(side.step() for _ in range(steps)))
    epoch_steps = steps_per_epoch(SHOTS * classes, BATCH)
    print(f"{method}, {classes} classes ({epoch_steps} steps/epoch at {SHOTS} shots), "
          f"{rounds} rounds x {steps} steps:")
    for label, side in runs.items():
        m = medians[label]
        print(f"  {label:<22} {side.length:>2} positions  median {statistics.median(m):7.3f} s/step "
              f"(min {min(m):.3f}, max {max(m):.3f})  {statistics.median(m) * epoch_steps:8.1f} s/epoch")
    first, second = (statistics.median(m) for m in medians.values())
    ratios = [a / b for a, b in zip(*medians.values())]
    print(f"  speed-up {first / second:.2f}x (ratio of medians), median per-round ratio "
          f"{statistics.median(ratios):.2f}x (" + ", ".join(f"{r:.2f}" for r in ratios) + ")")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--classes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--methods", nargs="+", choices=["anchoropt", "coop"], default=["anchoropt"])
    parser.add_argument("--compare", choices=["share", "truncate"], default="share")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per side per round")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 avoids waiting on a descheduled "
                             "second thread at every op when the machine is oversubscribed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare == "share":
        sides = {"per-class prompts": dict(truncate=True, share_prefix=False),
                 "shared prefix": dict(truncate=True, share_prefix=True)}
    else:
        sides = {"full sequences": dict(truncate=False, share_prefix=False),
                 "cut at EOS": dict(truncate=True, share_prefix=False)}
    backbone = create_backbone(args.backbone, "none")
    print(f"{args.backbone} (random init, fp32), torch threads {torch.get_num_threads()}, "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for classes in args.classes:
        for method in args.methods:
            compare(backbone, classes, method, sides, args.rounds, args.steps)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
