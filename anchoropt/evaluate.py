"""Score a saved run again without training (``anchoropt eval RUN_DIR``), as Dassl's ``--eval-only
--model-dir``: on the base, novel and all classes of its own dataset or of another one (a
cross-dataset target), on the test images or the few-shot val images.

The run folder is what ``anchoropt train --out`` writes: ``record.json`` (its resolved config) and
``prompts.pt`` (its learned tensors). The method is rebuilt from the config exactly as the run
built it (same backbone, shots, training classes), its tensors are put back
(:meth:`anchoropt.methods.Method.load_tensors`) and it scores with its own inference rule: the
run's own base classes with the prompt (they were trained), every other class set as unseen (for
AnchorOPT the anchor ensemble, SPEC section 4; the ``all`` set holds unseen classes, so it is
scored so too). On its own dataset and split the base and novel accuracies are the run's own.

The evaluation is a result record (docs/INTERFACES.md) marked ``evaluation_of`` (the run folder,
its method, dataset, seed and recorded metrics): on the run's dataset a base-to-novel record
(``acc_base``, ``acc_novel``, ``hm``, ``acc_all``); on another dataset a cross-dataset target
record (``acc``: all its classes; ``acc_base``, ``acc_novel`` beside it), as the report reads them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from anchoropt.config import ConfigError, TrainConfig, make_config
from anchoropt.io import check_output_dir

#: what an evaluation may change: what is scored and where it is read; the rest is the run's own
EVAL_KEYS = ("dataset", "eval_split", "data_root", "cache_dir", "device")


def read_run(run_dir: str | Path) -> tuple[dict, Path]:
    """The run's record and the path of its ``prompts.pt``.

    Raises:
        ConfigError: the folder, ``record.json`` or ``prompts.pt`` is missing, or the record is unreadable.
    """
    from anchoropt.io import read_text

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir} (a folder written by anchoropt train --out)")
    text = read_text(run_dir / "record.json", "run record", ConfigError)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{run_dir / 'record.json'}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{run_dir / 'record.json'}: not a run record (no config)")
    prompts = run_dir / "prompts.pt"
    if not prompts.is_file():
        raise ConfigError(f"{run_dir}: no prompts.pt (the run's learned tensors) to score")
    return record, prompts


def eval_config(record: dict, overrides: dict[str, Any], source: str) -> tuple[TrainConfig, str, str]:
    """(the run's config with where it reads replaced, the scored dataset, the scored split).

    Raises:
        ConfigError: a key other than :data:`EVAL_KEYS` (the method is scored as trained), or a bad value.
    """
    fixed = sorted(set(overrides) - set(EVAL_KEYS))
    if fixed:
        raise ConfigError(f"{fixed[0]}: an evaluation scores the saved run as it was trained; only "
                          f"{', '.join(EVAL_KEYS)} may be given")
    where = {k: overrides[k] for k in ("data_root", "cache_dir", "device") if k in overrides}
    cfg = make_config({**record["config"], **where}, source=source)
    scored = make_config({**cfg.to_dict(), "dataset": overrides.get("dataset", cfg.dataset),
                          "eval_split": overrides.get("eval_split", "test")}, source="key=value")
    return cfg, scored.dataset, scored.eval_split


def evaluate_run(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    """Score the saved run in ``run_dir`` (module docstring) and return the evaluation record.

    Args:
        run_dir: a folder holding ``record.json`` and ``prompts.pt``.
        overrides: :data:`EVAL_KEYS`: ``dataset`` (default the run's), ``eval_split`` (``test``,
            default, or ``val``: the few-shot val images of the run's seed), ``data_root``,
            ``cache_dir``, ``device``.

    Returns:
        The record: metrics ``acc_base``, ``acc_novel``, ``acc_all`` (and ``acc_anchor_*`` for
        methods with anchors) in percent, ``hm`` on the run's own dataset, ``acc`` on another.

    Raises:
        ConfigError, DataError, BackboneError: one line naming the file, key or dataset.
        OutputError: ``cache_dir`` is not writable (read-only or full disk), before anything is scored.
    """
    import torch

    from anchoropt.data import base_novel_labels, build_dataset, fewshot_splits
    from anchoropt.engine import Trainer
    from anchoropt.methods import build_method
    from anchoropt.task import build_eval_set, build_task
    from anchoropt.train import cached_backbone, resolve_ctx_init, resolve_device

    start = time.time()
    record, prompts = read_run(run_dir)
    cfg, dataset, split = eval_config(record, overrides or {}, str(Path(run_dir) / "record.json"))
    check_output_dir(cfg.cache_dir, "cache_dir")
    device = resolve_device(cfg.device)
    data = build_dataset(cfg.data_root, cfg.dataset)
    target = data if dataset == cfg.dataset else build_dataset(cfg.data_root, dataset)
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, str(device), cfg.preprocess)
    cfg = resolve_ctx_init(cfg, backbone)
    task = build_task(cfg, backbone, device, data)  # the run's training classes, as it drew them
    trainer = Trainer(cfg, backbone, task, device)
    method = build_method(trainer)
    method.load_tensors(torch.load(prompts, weights_only=True))

    images = target.test if split == "test" else fewshot_splits(target, cfg.shots, cfg.seed)[1]
    all_labels = sorted({d.label for d in target.train})
    if target is data and cfg.protocol == "cross_dataset":  # trained on every class: the source's score
        sets = {"all": (all_labels, True)}
    else:
        trained = sorted(target.classnames.index(c) for c in task.classnames) if target is data else []
        base, novel = base_novel_labels(all_labels)
        sets = {"base": (trained or base, bool(trained)), "novel": (novel, False), "all": (all_labels, False)}
    trainer.task = dataclasses.replace(task, evals={
        name: build_eval_set(cfg, backbone, device, dataset, target, images, labels, seen)
        for name, (labels, seen) in sets.items()})
    metrics = trainer.evaluate(method)  # with hm on a base-to-novel run (a cross-dataset record has none)
    return eval_record(record, cfg, dataset, split, metrics, time.time() - start, Path(run_dir))


def eval_record(run: dict, cfg: TrainConfig, dataset: str, split: str, metrics: dict[str, float],
                wall_time_s: float, run_dir: Path) -> dict:
    """The evaluation's result record: base-to-novel on the run's dataset, a cross-dataset target
    record on another, marked ``evaluation_of`` the run."""
    from anchoropt.records import build_record

    scored = make_config({**cfg.to_dict(), "eval_split": split}, source="evaluation")
    record = build_record(scored, metrics, wall_time_s, tuning=run.get("tuning", "untuned"),
                          training=run.get("training"))
    record["method"] = run.get("method", record["method"])
    record["evaluation_of"] = {"run": str(run_dir.resolve()), "method": run.get("method"),
                               "dataset": cfg.dataset, "seed": cfg.seed, "metrics": run.get("metrics"),
                               "created": run.get("created")}
    if dataset != cfg.dataset or cfg.protocol == "cross_dataset":
        anchor = {"acc_anchor": metrics["acc_anchor_all"]} if "acc_anchor_all" in metrics else {}
        record.update(dataset=dataset, protocol="cross_dataset", source=cfg.dataset,
                      role="source" if dataset == cfg.dataset else "target",
                      metrics={"acc": metrics["acc_all"], **anchor, **{k: v for k, v in metrics.items() if k != "hm"}})
    else:
        record["protocol"] = "base2novel"
    return record
