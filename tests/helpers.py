"""Tiny data and models the tests make themselves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TINY = "TinyCLIP-test"  # tests/model_configs/TinyCLIP-test.json
TINY_VIT = "TinyViT-test"  # a 4-layer ViT image tower (MaPLe), text tower of 3 layers

REPO_ROOT = Path(__file__).resolve().parents[1]
#: a small space with a conditional parameter, shared by the space and driver tests
TINY_SPACE = {"params": {
    "n_anchors": {"type": "categorical", "choices": [1, 2]},
    "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
    "schedule": {"type": "categorical", "choices": ["one_stage", "two_stage"]},
    "period": {"type": "int", "low": 1, "high": 3, "when": {"schedule": "one_stage"}},
    "kd_weight": {"type": "categorical", "choices": [0, 1]},
}}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (150, 40, 180), "orange": (240, 140, 20)}


def write_image(path: Path, rgb, rng: np.random.Generator, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def make_split_dataset(root: Path, folder: str, image_dir: str, split_file: str, classnames: list[str],
                       per_class=(6, 2, 3), seed: int = 0) -> dict:
    """A CoOp split_zhou dataset of solid-colour noisy images, one colour per class."""
    rng = np.random.default_rng(seed)
    base = root / folder
    split = {}
    for part, n in zip(("train", "val", "test"), per_class):
        entries = []
        for label, name in enumerate(classnames):
            for i in range(n):
                rel = f"{name.replace(' ', '_')}/{part}_{i}.png"
                write_image(base / image_dir / rel, list(COLOURS.values())[label % len(COLOURS)], rng)
                entries.append([rel, label, name])
        split[part] = entries
    (base / split_file).write_text(json.dumps(split))
    return split


_DASSL_MODULES = ("dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset")


def write_dassl_pickle(path: Path, chosen: dict) -> Path:
    """Pickle ``{"train"|"val": [(impath, label, classname)]}`` as Dassl's ``Datum`` records, as Dassl
    writes ``split_fewshot/shot_K-seed_S.pkl`` (Dassl's module exists only while pickling)."""
    import pickle
    import sys
    import types

    mod = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum:  # the fields of Dassl's Datum
        def __init__(self, impath, label, domain, classname):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname
    Datum.__module__, Datum.__qualname__ = "dassl.data.datasets.base_dataset", "Datum"
    mod.Datum = Datum
    sys.modules.update(dict.fromkeys(_DASSL_MODULES, mod))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump({part: [Datum(p, lab, 0, c) for p, lab, c in items] for part, items in chosen.items()},
                        f, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for name in _DASSL_MODULES:
            del sys.modules[name]
    return path


def write_descriptions(path: Path, classnames: list[str], n: int = 10) -> Path:
    path.write_text(json.dumps({c: [f"A photo of {c}, sentence {i}." for i in range(n)] for c in classnames}))
    return path


def save_openai_style_jit(state_dict: dict, path: Path) -> Path:
    """Save a state dict as a TorchScript archive with OpenAI's extra entries, as OpenAI's ``.pt`` files are."""
    import torch

    class Holder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    state = dict(state_dict, input_resolution=torch.tensor(32), context_length=torch.tensor(77),
                 vocab_size=torch.tensor(49408))
    for key, value in state.items():
        module, *parents = root, *key.split(".")[:-1]
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_buffer(key.split(".")[-1], value.clone())
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def write_suite(tmp_path: Path, data_root: Path, methods: dict | None = None, seeds=(1, 2), extra: dict | None = None,
                name: str = "suite.yaml") -> Path:
    """A small base-to-novel suite on the tiny EuroSAT of ``data_root`` (TinyCLIP, 2 epochs, CPU)."""
    suite = {
        "name": "tiny", "datasets": ["eurosat"], "seeds": list(seeds),
        "config": {"data_root": str(data_root), "backbone": TINY, "pretrained": "none",
                   "descriptions_dir": str(data_root), "cache_dir": str(tmp_path / "cache"), "shots": 4,
                   "epochs": 2, "anchor_epochs": 2, "train_views": 1, "device": "cpu"},
        "methods": methods or {"zeroshot": {"method": "zeroshot"}, "coop": {"method": "coop"},
                               "two": {"method": "anchoropt", "schedule": "two_stage"}},
        **(extra or {}),
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite))
    return path


def load_script(relpath: str):
    """A script of the repository (``benchmarks/...``, not part of the package) imported as a module."""
    import importlib.util

    path = REPO_ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def search_base(tiny_cfg, **kw) -> dict:
    """A base configuration for test searches: the tiny EuroSAT, 2 epochs, 2 Stage I epochs, 4 shots."""
    return tiny_cfg(**{"epochs": 2, "anchor_epochs": 2, "train_views": 1, "shots": 4, **kw}).to_dict()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def trial_actor_pids() -> list[int]:
    """PIDs of this test session's Ray Tune trial actors (process title ``ray::ImplicitFunc...``,
    descendants of this process: never another session's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not (proc.name.isdigit() and b"ImplicitFunc" in (proc / "cmdline").read_bytes()):
                continue
            pid = int(proc.name)
            while pid > 1 and pid != os.getpid():
                pid = _parent(pid)
            if pid == os.getpid():
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            pass
    return pids


@contextmanager
def one_trial_actor_killed(timeout_s: float = 180):
    """While the block runs, SIGKILL one trial actor of this session 1 s after it appears (mid-trial
    for a trial of many epochs); yields the list of killed PIDs (empty if none was seen in time)."""
    killed: list[int] = []

    def kill():
        deadline = time.time() + timeout_s
        while time.time() < deadline and not killed:
            pids = trial_actor_pids()
            if pids:
                time.sleep(1)
                try:
                    os.kill(pids[0], signal.SIGKILL)
                except ProcessLookupError:  # that actor was gone already (e.g. a worker Ray replaced): look again
                    continue
                killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()


def interrupt(proc: subprocess.Popen, timeout_s: float = 120, sig: int = signal.SIGINT) -> str:
    """Send Ctrl-C (SIGINT, to ``proc``'s process group, as a terminal does) or ``sig`` (to ``proc``
    alone, as ``kill`` or a cluster's preemption does), wait for it, and return its stderr; the
    group is SIGKILLed if it is still running after ``timeout_s``."""
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, sig)
    try:
        return proc.communicate(timeout=timeout_s)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def make_trainer(cfg):
    """The :class:`~anchoropt.engine.Trainer` of ``cfg`` on CPU (backbone cached per process), no training."""
    import torch

    from anchoropt.engine import Trainer
    from anchoropt.task import build_task
    from anchoropt.train import cached_backbone
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    return Trainer(cfg, backbone, build_task(cfg, backbone), torch.device("cpu"))


def reference_text_features(model, embeds, token_ids):
    """The reference's ``TextEncoder.forward`` (trainers/coop.py) on an open_clip model: full
    77-position sequences ``embeds [C, 77, d]``, the plain transformer, the feature at
    ``token_ids.argmax(-1)`` (EOS). A hand-built prompt's features, for method tests."""
    x = embeds + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x[range(x.shape[0]), token_ids.argmax(dim=-1)] @ model.text_projection
