"""One run end to end: data, backbone, task, the method (:mod:`anchoropt.methods`) trained by
its schedule (:mod:`anchoropt.schedules`), evaluation and the record.

The training loop, optimiser steppers and seeded random streams live in :mod:`anchoropt.engine`.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable

import torch

from anchoropt.backbone import Backbone, create_backbone
from anchoropt.config import ConfigError, TrainConfig
from anchoropt.data import build_dataset
from anchoropt.data.check import check_run_images
from anchoropt.engine import NonFiniteLoss, Trainer, seed_everything
from anchoropt.io import check_output_dir, save_json, save_tensors
from anchoropt.methods import METHODS, Method, build_method
from anchoropt.records import build_record
from anchoropt.task import build_task, read_targets

__all__ = ["NonFiniteLoss", "Trainer", "cached_backbone", "resolve_device", "train"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU.

    Raises:
        ConfigError: ``cuda``/``mps`` asked for on a machine or torch build without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
        raise ConfigError(f"device={name} but torch {torch.__version__} is {build}: use device=cpu or device=auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} but MPS is not available here: use device=cpu or device=auto")
    return device


def cached_backbone(name: str, pretrained: str, quick_gelu: bool | None, device: str, preprocess: str = "") -> Backbone:
    """One frozen backbone per process, reused by every run in it (Ray actors run many trials)."""
    return _cached_backbone(name, pretrained, quick_gelu, device, preprocess)


@functools.lru_cache(maxsize=2)
def _cached_backbone(name: str, pretrained: str, quick_gelu: bool | None, device: str, preprocess: str) -> Backbone:
    # every argument positional, so calls with and without the default share one entry
    return create_backbone(name, pretrained, quick_gelu, device, preprocess)


def resolve_ctx_init(cfg: TrainConfig, backbone: Backbone) -> TrainConfig:
    """With ``ctx_init`` the soft tokens are that phrase's BPE tokens, so ``n_ctx`` becomes their
    count (CoOp sizes the context by the phrase; MaPLe keeps ``n_ctx``); the record then shows the
    size that ran."""
    if not cfg.ctx_init or not METHODS[cfg.method].phrase_sets_n_ctx:
        return cfg
    return dataclasses.replace(cfg, n_ctx=len(backbone.tokenizer.encode(cfg.ctx_init)))


def train(cfg: TrainConfig, out_dir: str | Path | None = None,
          report: Callable[[dict], None] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run one (dataset, seed, config) end to end and return its result record.

    Args:
        cfg: validated configuration.
        out_dir: if given, ``record.json`` and ``prompts.pt`` (learned tensors, loadable with
            ``torch.load(weights_only=True)``) are written there atomically.
        report: called after every CoOp / Stage II / one-stage epoch with ``epoch`` (1-based),
            ``loss`` and the metrics of :meth:`Trainer.evaluate` (percent); used by search for
            per-epoch reports. Reporting draws nothing from the training's random streams.
        log: called with a line of progress before each long step (encoding the images, Stage I)
            and after each Stage I epoch (its loss), so a command is never silent for minutes
            (``anchoropt train`` prints them); None: quiet, as search and benchmark trials run.

    Returns:
        The record (:func:`anchoropt.records.build_record`, docs/INTERFACES.md): config, seed, backbone
        activation, metrics in percent (base2novel:
        ``acc_base``, ``acc_novel``, ``hm``; cross_dataset: ``acc_<dataset>`` for the source and
        each target), ``training`` (updates per trainable group, descriptions cut), wall time,
        versions.

    Raises:
        DataError, BackboneError, NonFiniteLoss: with a one-line message naming the cause.
    """
    start = time.time()
    check_output_dir(cfg.cache_dir, "cache_dir")
    device = resolve_device(cfg.device)
    data = build_dataset(cfg.data_root, cfg.dataset)  # bad data fails before a large backbone loads
    targets = read_targets(cfg) if cfg.protocol == "cross_dataset" else None
    check_run_images(cfg, data, targets)  # present and decodable, before the backbone is built
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    cfg = resolve_ctx_init(cfg, backbone)
    METHODS[cfg.method].check(cfg, backbone)  # before the images are encoded
    say = log or (lambda line: None)
    say(f"encoding {cfg.dataset}'s few-shot training images ({cfg.train_views} augmented views each) and its "
        f"evaluation images with {cfg.backbone} (features already cached under {cfg.cache_dir} are read)")
    encode_start = time.time()
    task = build_task(cfg, backbone, device, data, targets)
    say(f"features ready ({time.time() - encode_start:.1f} s)")
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, backbone, task, device)
    method = build_method(trainer)
    if hasattr(method, "fit_anchors") and cfg.schedule == "two_stage" and cfg.anchor_source == "stage1":
        say(f"Stage I: fitting {cfg.n_anchors} anchor(s) to the class descriptions, {cfg.anchor_epochs} epochs "
            "(a Stage I already cached under cache_dir is read instead)")

    def on_epoch(epoch: int, info: dict) -> None:
        if info["phase"] == "stage1":
            say(f"stage1 epoch {epoch + 1:>3}/{cfg.anchor_epochs}  loss {info['loss']:.4f}")
        elif report is not None:
            metrics = trainer.evaluate(method)
            method.train()
            report({"epoch": epoch + 1, "loss": info["loss"], **metrics})

    method.fit(on_epoch)
    metrics = trainer.evaluate(method)
    record = build_record(cfg, metrics, time.time() - start, training=training_summary(method),
                          activation={"function": backbone.activation, "decided_by": backbone.activation_from})
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_tensors(method.tensors(), out_dir / "prompts.pt")
        save_json(record, out_dir / "record.json")
    return record


def training_summary(method: Method) -> dict:
    """What the run actually did: optimiser updates per trainable group (``anchors``, ``prompt``),
    how many Stage I descriptions were cut at the context length, and the method's own entries
    (AnchorOPT's ``stage1``: the epoch kept, or the anchor file and its sha256)."""
    return {"updates": method.updates(), "descriptions_cut": method.trainer.descriptions_cut, **method.training_info()}


#: the TrainConfig keys a run's image features depend on (:func:`anchoropt.task.build_task`): runs
#: equal on them read the same feature files
FEATURE_KEYS = ("backbone", "pretrained", "quick_gelu", "preprocess", "device", "data_root", "dataset", "targets",
                "protocol", "eval_split", "shots", "seed", "train_views", "crop_scale", "flip", "cache_dir")


def encode_features(configs: list[TrainConfig], threads: int | None = None) -> int:
    """Encode into the cache every image feature set the runs ``configs`` will read, in this process
    with ``threads`` torch threads (default: every core), before their trials start: trials then
    read the features instead of encoding them on their one core each. A progress bar per image
    set shows on a terminal. A config whose data or backbone fails is skipped: its own run reports
    the fault. Returns the number of distinct feature sets (configs equal on :data:`FEATURE_KEYS`)."""
    import os

    distinct = list({tuple(str(getattr(c, k)) for k in FEATURE_KEYS): c for c in configs}.values())
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        for cfg in distinct:
            try:
                device = resolve_device(cfg.device)
                backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
                build_task(cfg, backbone, device)
            except (ConfigError, ValueError, OSError, RuntimeError):  # DataError, BackboneError among them
                continue
    finally:
        torch.set_num_threads(threads_before)
    return len(distinct)
