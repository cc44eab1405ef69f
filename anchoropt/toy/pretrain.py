"""Contrastive (CLIP) pretraining of the small ``ToyCLIP`` model on the toy world, on CPU.

Run::

    python -m anchoropt.toy.pretrain --out anchoropt/assets/toyclip.pt --steps 4500 --seed 0 --lr 1e-3 \
        --warmup 100 --group-frac 0.75 --probe-every 250

Every step draws a fresh batch of (image, caption) pairs from :mod:`anchoropt.toy.world`
(batch ``b`` of run seed ``s`` uses world stream ``s`` indices ``b*B .. b*B+B-1``, generated in a
helper process), trains with open_clip's ``ClipLoss`` (symmetric InfoNCE), AdamW with linear
warm-up and cosine decay. With ``--minutes`` the cosine runs over wall time and training stops when
the budget is spent (the step count reached is logged; ``--steps N`` runs a step-based schedule). The text tower is run on the
batch's tokens cut after the longest end-of-text token (exact under CLIP's causal mask).

The checkpoint is an fp16 ``state_dict``, loaded by the backbone factory:
``anchoropt.backbone.create_backbone("ToyCLIP", "toy")``.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

import anchoropt.torchvision_compat  # noqa: F401  (before open_clip)
import open_clip
import torch
import torch.nn.functional as F

from anchoropt.backbone import TOY_CHECKPOINTS, create_backbone  # also registers the ToyCLIP config
from anchoropt.text import TextEncoder
from anchoropt.toy import world

MODEL_NAME = "ToyCLIP"
MEAN = np.array(open_clip.OPENAI_DATASET_MEAN, np.float32)
STD = np.array(open_clip.OPENAI_DATASET_STD, np.float32)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> normalised float tensor (n, 3, 64, 64) (same as the eval transform)."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def encode_text_cut(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` (unnormalised) on tokens cut after the last EOS (exact, SPEC section 2)."""
    eos = tokens.argmax(dim=-1)
    return TextEncoder(model)(model.token_embedding(tokens[:, :int(eos.max()) + 1]), eos)


# ---------------------------------------------------------------------------- data worker
_TOK = None
_PRODUCERS: list = []  # helper processes to stop on exit


# attribute -> weight when choosing which attribute a hard-negative group varies
GROUP_WEIGHTS = {"shape": 6, "pattern": 2, "position": 2, "size": 1, "count": 1, "colour": 1, "background": 1}


def make_batch(seed: int, step: int, batch: int, group_frac: float = 0.0, group_size: int = 8):
    """Images and captions of training batch ``step`` (deterministic in ``(seed, step, batch)``).

    A fraction ``group_frac`` of the batch is made of hard-negative groups
    (:func:`world.contrast_group`: scenes differing in one attribute, which their captions always
    mention); the rest are independent random scenes (world stream ``seed``, indices
    ``step*batch ...``).

    Returns:
        ``(images uint8 (batch, 64, 64, 3), captions list of str)``.
    """
    n_group = int(round(batch * group_frac))
    caps: list = []
    imgs = []
    if n_group:
        rng = np.random.default_rng([seed, 7777, step])
        names, w = list(GROUP_WEIGHTS), np.array(list(GROUP_WEIGHTS.values()), float)
        while len(caps) < n_group:
            attr = names[int(rng.choice(len(names), p=w / w.sum()))]
            for sc in world.contrast_group(rng, attr, max_size=min(group_size, n_group - len(caps))):
                imgs.append(world.render(sc, rng))
                caps.append(world.caption(sc, rng, always=(attr,)))
    r_imgs, _, r_caps = world.generate(batch - n_group, seed=seed, start=step * batch)
    images = np.concatenate([np.stack(imgs), r_imgs]) if imgs else r_imgs
    return images, caps + r_caps


def _make_batch(args):
    seed, step, batch, group_frac = args
    global _TOK
    if _TOK is None:
        _TOK = open_clip.get_tokenizer(MODEL_NAME)
    imgs, caps = make_batch(seed, step, batch, group_frac)
    return images_to_tensor(imgs), _TOK(caps)


def _producer(seed, batch, start_step, queue, group_frac):
    torch.set_num_threads(1)
    s = start_step
    while True:
        images, tokens = _make_batch((seed, s, batch, group_frac))
        queue.put((s, images.numpy(), tokens.numpy()))
        s += 1


def _batches(seed, batch, start_step, workers, group_frac=0.0):
    """Yield ``(images, tokens)`` batches in order; ``workers`` > 0 generates them ahead in one
    helper process (bounded queue)."""
    if workers <= 0:
        s = start_step
        while True:
            yield _make_batch((seed, s, batch, group_frac))
            s += 1
    ctx = mp.get_context("fork")
    queue = ctx.Queue(maxsize=4)
    proc = ctx.Process(target=_producer, args=(seed, batch, start_step, queue, group_frac), daemon=True)
    proc.start()
    _PRODUCERS.append(proc)
    try:
        expect = start_step
        while True:
            s, im, tok = queue.get()
            assert s == expect
            expect += 1
            yield torch.from_numpy(im), torch.from_numpy(tok)
    finally:
        proc.terminate()


# ---------------------------------------------------------------------------- probes
PROBES = {
    # name: (attribute(s), prompt builder)
    "shape": (("shape",), lambda v: f"a photo of a {v[0]}."),
    "colour": (("colour",), lambda v: f"a photo of a {v[0]} shape."),
    "pattern": (("pattern",), lambda v: f"a photo of a {v[0]} shape."),
    "count": (("count",), lambda v: f"a photo of {world.NUMBER_WORDS[v[0]]} {'shape' if v[0] == 1 else 'shapes'}."),
    "size": (("size",), lambda v: f"a photo of a {v[0]} shape."),
    "background": (("background",), lambda v: f"a photo of shapes on a {v[0]} background."),
    "position": (("position",), lambda v: f"a photo of a shape in the {v[0]}."),
    "colour_shape": (("colour", "shape"), lambda v: f"a photo of a {v[0]} {v[1]}."),
}


@torch.no_grad()
def probe(model, tokenizer, n: int = 400, seed: int = 12345) -> dict:
    """Zero-shot accuracy (%) on fresh world samples for each probe task in ``PROBES``.

    Images: ``n`` random scenes per task (stream ``seed``); the true class is the scene's value(s)
    of the task attribute(s); one prompt per class.
    """
    was_training = model.training
    model.eval()
    out = {}
    for ti, (name, (attrs, prompt)) in enumerate(PROBES.items()):
        values = [()]
        for a in attrs:
            values = [v + (x,) for v in values for x in world.ATTRIBUTES[a]]
        tf = F.normalize(model.encode_text(tokenizer([prompt(v) for v in values])), dim=-1)
        imgs, scenes, _ = world.generate(n, seed=seed + ti, with_captions=False,
                                         **({"count": 1} if name == "position" else {}))
        feats = F.normalize(model.encode_image(images_to_tensor(imgs)), dim=-1)
        pred = (feats @ tf.T).argmax(1).numpy()
        truth = np.array([values.index(tuple(getattr(s, a) for a in attrs)) for s in scenes])
        out[name] = round(100.0 * float((pred == truth).mean()), 1)
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------- training
def save_fp16(model, path) -> int:
    """Save ``model.state_dict()`` with floating tensors in fp16; returns the file size in bytes."""
    sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="checkpoint file (default: the shipped one of --model)")
    ap.add_argument("--model", default=MODEL_NAME,
                    help="open_clip model config (extra configs: ANCHOROPT_MODEL_CONFIGS=DIR)")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: <out without .pt>_train.log)")
    ap.add_argument("--minutes", type=float, default=35.0, help="wall-time budget (ignored with --steps)")
    ap.add_argument("--steps", type=int, default=None, help="fixed number of steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--probe-every", type=int, default=200)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this checkpoint's weights (continue training; fresh optimiser)")
    ap.add_argument("--data-offset", type=int, default=0,
                    help="first batch index of the world stream (use the previous run's step count "
                         "with --init so that no batch is seen twice)")
    ap.add_argument("--group-frac", type=float, default=0.5,
                    help="fraction of each batch made of hard-negative groups (scenes differing in one "
                         "attribute, see world.contrast_group); 0 = all independent random scenes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="data generation processes (0: inline)")
    a = ap.parse_args(argv)

    a.out = a.out or TOY_CHECKPOINTS[a.model]
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    log_path = a.log or a.out.with_name(a.out.stem + "_train.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "a" if a.init is not None else "w")  # a continuation appends

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    if a.init is not None:
        model = open_clip.create_model(a.model, pretrained=str(a.init))
        log(f"initialised from {a.init}")
    else:
        model = open_clip.create_model(a.model)
    model.train()
    tokenizer = open_clip.get_tokenizer(a.model)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"args {vars(a)}")
    log(f"{a.model} params {n_params / 1e6:.2f}M torch {torch.__version__} open_clip {open_clip.__version__}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()

    total = a.steps
    budget_s = a.minutes * 60.0
    t0 = time.time()
    data = _batches(a.seed, a.batch_size, a.data_offset, a.workers, a.group_frac)
    step, ema = 0, None
    while True:
        elapsed = time.time() - t0
        if total is not None:
            if step >= total:
                break
            progress = (step - a.warmup) / max(1, total - a.warmup)
        else:  # wall-time budget: cosine over time, stop when it is spent
            if elapsed >= budget_s:
                break
            progress = elapsed / budget_s
        lr = a.lr * (step + 1) / a.warmup if step < a.warmup else \
            0.5 * a.lr * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
        for g in opt.param_groups:
            g["lr"] = lr
        images, tokens = next(data)
        img_f = F.normalize(model.encode_image(images), dim=-1)
        txt_f = F.normalize(encode_text_cut(model, tokens), dim=-1)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % a.log_every == 0 or step == 1:
            log(f"step {step}/{total} loss {loss.item():.4f} ema {ema:.4f} lr {lr:.2e} "
                f"scale {model.logit_scale.exp().item():.1f} elapsed {time.time() - t0:.0f}s")
        if a.probe_every and step % a.probe_every == 0:
            log(f"probe step {step}: {probe(model, tokenizer, n=200)}")
            save_fp16(model, a.out)
    size = save_fp16(model, a.out)
    for proc in _PRODUCERS:
        proc.terminate()
        proc.join(5)
    log(f"saved {a.out} ({size / 1e6:.1f} MB) after {step} steps, {time.time() - t0:.0f}s")
    # check it loads through open_clip and probe the loaded model
    loaded = create_backbone(a.model, str(a.out))
    log(f"final probe (loaded checkpoint, 400 images/task): {probe(loaded.model, loaded.tokenizer, n=400)}")
    log(f"done in {time.time() - t0:.0f}s")
    logf.close()
    os._exit(0)  # do not wait on the data pool's queued batches


if __name__ == "__main__":
    main()
