"""Seconds per Stage II step (text forward + backward over every class prompt), with and
without cutting the sequences at EOS (SPEC section 2).

Usage (random-init ViT-B-16, 100 classes, CPU):
    python benchmarks/perf/stage2_step.py --backbone ViT-B-16 --classes 100 --steps 3
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from anchoropt.backbone import create_backbone
from anchoropt.engine import stream_generator
from anchoropt.prompts import AnchorOPTPrompt, clip_logits, normal_init
from anchoropt.text import ClassTokens, TextEncoder


def seconds_per_step(backbone, names: list[str], truncate: bool, steps: int, batch: int = 32) -> tuple[float, int]:
    """Median wall seconds of one Stage II step, and the sequence length the transformer ran."""
    width = backbone.model.token_embedding.weight.shape[1]
    encoder = TextEncoder(backbone.model)
    learner = AnchorOPTPrompt(normal_init(4, width, stream_generator(0, "soft_tokens")), torch.randn(5, 5),
                              stream_generator(0, "gumbel"))
    anchors = torch.randn(1, width) * 0.02
    tokens = ClassTokens.build(names, learner.n_block, learner.rest, backbone.tokenizer,
                               backbone.model.token_embedding, truncate)
    images = torch.randn(batch, backbone.model.text_projection.shape[-1])
    labels = torch.randint(len(names), (batch,))
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        logits = clip_logits(images, learner(encoder, tokens, anchors), backbone.model.logit_scale)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2], tokens.suffix.shape[1] + 1 + tokens.n_block


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    backbone = create_backbone(args.backbone, "none")
    names = [f"class number {i}" for i in range(args.classes)]
    print(f"{args.backbone} (random init), {args.classes} classes, torch threads {torch.get_num_threads()}")
    full, full_len = seconds_per_step(backbone, names, truncate=False, steps=args.steps)
    cut, cut_len = seconds_per_step(backbone, names, truncate=True, steps=args.steps)
    print(f"full sequences ({full_len} tokens): {full:.3f} s/step")
    print(f"cut at EOS     ({cut_len} tokens): {cut:.3f} s/step   ({full / cut:.1f}x faster)")


if __name__ == "__main__":
    main()
