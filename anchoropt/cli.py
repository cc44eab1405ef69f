"""Command line: ``anchoropt train|eval|search|benchmark|report|data|export|run``. Errors in user input print one line and exit 2.

Every command names the data root as the config key ``data_root=PATH`` (``data toy``, ``data list`` and
``data check`` too).

Only the subcommand that runs imports what it needs: ``--help``, argument errors, ``report`` and
``data list`` load no torch (``tests/test_cli.py`` checks it).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import warnings
from datetime import datetime
from pathlib import Path

from anchoropt import __version__
from anchoropt.config import KEY_HELP, TrainConfig, load_config, parse_overrides, typed_overrides
from anchoropt.errors import ConfigError, brief, interrupt_of
from anchoropt.pipeline import DEFAULT_SPACE, DEFAULT_SUITE

#: the top-level --help (plain words: argparse prints it as is)
DESCRIPTION = ("Tune and benchmark AnchorOPT (CLIP prompt learning): train one run, search hyperparameters with "
               "Optuna and Ray Tune, benchmark a suite, write a significance report, manage datasets, or run the "
               "main job (anchoropt run). Errors in your input print one line and exit 2.")
# ConfigError, DataError (ValueError) and the errors of modules that only a running command imports
LAZY_ERRORS = (("anchoropt.backbone", "BackboneError"), ("anchoropt.train", "NonFiniteLoss"))


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors shown as one line: an error class of a module never imported cannot have been raised."""
    lazy = tuple(getattr(sys.modules[mod], name) for mod, name in LAZY_ERRORS if mod in sys.modules)
    return (ValueError, FileNotFoundError, *lazy)


def _train(args: argparse.Namespace) -> None:
    from anchoropt.data.datasets import data_root_dir

    cfg = load_config(args.config, args.overrides)
    data_root_dir(cfg.data_root)  # before torch loads: a missing root fails at once, naming the fix

    from tqdm.auto import tqdm

    from anchoropt.io import check_output_dir
    from anchoropt.train import train

    out = Path(args.out) if args.out else Path("runs") / cfg.dataset / \
        f"{cfg.run_name}-seed{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    check_output_dir(out, "--out")
    if (out / "record.json").exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already holds a run (record.json): use another folder, or --overwrite")

    def scores(m: dict) -> str:
        if cfg.protocol == "base2novel":
            return f"base {m['acc_base']:.2f}  novel {m['acc_novel']:.2f}  HM {m['hm']:.2f}"
        return "  ".join(f"{name} {m['acc_' + name]:.2f}" for name in [cfg.dataset, *cfg.target_list])

    def report(m: dict) -> None:
        tqdm.write(f"epoch {m['epoch']:>3}  loss {m['loss']:.4f}  {scores(m)}")

    record = train(cfg, out_dir=out, report=report, log=tqdm.write)
    print(f"{cfg.dataset} seed {cfg.seed} {record['method']}: {scores(record['metrics'])}  "
          f"({record['wall_time_s']:.1f} s)")
    print(f"record: {out / 'record.json'}")


def _search(args: argparse.Namespace) -> None:
    from anchoropt.search.driver import run_search
    from anchoropt.search.spec import SearchError

    common = dict(num_trials=args.num_trials, address=args.address, num_cpus=args.num_cpus,
                  max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                  gpus_per_trial=args.gpus_per_trial, verbose=args.verbose, print_summary=True, mlflow=_mlflow(args),
                  dry_run=args.dry_run)
    if args.resume:
        given = [flag for flag, value in (("--space", args.space), ("--out", args.out), ("--config", args.config),
                                          ("--objective", args.objective), ("--sampler", args.sampler),
                                          ("--seed", args.seed), ("--scheduler", args.scheduler),
                                          ("--storage", args.storage), ("--enqueue", args.enqueue),
                                          ("key=value", args.overrides)) if value not in (None, [])]
        if given:
            raise SearchError(f"--resume DIR takes the space, base config and options stored in DIR, not "
                              f"{', '.join(given)}; only --num-trials, --max-concurrent, --address, "
                              f"--num-cpus may be given")
        _search_outcome(run_search(resume=args.resume, **common))
        return
    missing = [flag for flag, value in (("--space", args.space), ("--num-trials", args.num_trials),
                                        ("--out", args.out)) if value is None]
    if missing:
        raise SearchError(f"a new search needs {', '.join(missing)} (or --resume DIR)")
    base = load_config(args.config, args.overrides)
    _search_outcome(run_search(args.space, args.out, base=base, objective=args.objective or "val",
                               sampler=args.sampler or "tpe", seed=args.seed or 0, scheduler=args.scheduler or "none",
                               storage=args.storage, enqueue=args.enqueue or (), **common))


def _search_outcome(result) -> None:
    """Exit 1 when the search has no completed trial, or did not reach its budget."""
    if result is None:  # a dry run
        return
    if result.n_complete == 0:
        print(f"anchoropt: error: no trial of the search completed ({result.n_failed} failed): "
              f"see {result.out_dir / 'trials.csv'}", file=sys.stderr)
        sys.exit(1)
    if result.n_done < result.num_trials:
        print(f"anchoropt: error: {result.n_done} of {result.num_trials} trials done: "
              f"resume with anchoropt search --resume {result.out_dir}", file=sys.stderr)
        sys.exit(1)


def _search_show(args: argparse.Namespace) -> None:
    from anchoropt.search.show import show

    print(show(args.dir))


def _benchmark(args: argparse.Namespace) -> None:
    from anchoropt.benchmark import describe_plan, run_benchmark
    from anchoropt.suite import load_suite, select

    suite = select(load_suite(args.suite, typed_overrides(args.overrides)), datasets=args.datasets,
                   seeds=args.seeds, methods=args.methods)
    if args.dry_run:
        print(describe_plan(suite, args.results))
        return
    counts = run_benchmark(suite, args.results, cpus_per_trial=args.cpus_per_trial or 1.0,
                           gpus_per_trial=args.gpus_per_trial or 0.0, max_concurrent=args.max_concurrent,
                           address=args.address, num_cpus=args.num_cpus, verbose=args.verbose, mlflow=_mlflow(args))
    print(f"cells: {counts['done']} run, {counts['failed']} failed, {counts['skipped']} already done; "
          f"records under {args.results}")
    if counts["failed"]:
        sys.exit(1)


def _eval(args: argparse.Namespace) -> None:
    from anchoropt.evaluate import evaluate_run, read_run
    from anchoropt.io import check_output_dir, save_json

    overrides = parse_overrides(args.overrides)
    read_run(args.run_dir)  # a missing run is named as such before its output folder is probed
    check_output_dir(*((Path(args.out).parent, "--out") if args.out else (Path(args.run_dir) / "eval", "eval folder")))
    record = evaluate_run(args.run_dir, overrides)
    m = record["metrics"]
    out = Path(args.out or Path(args.run_dir) / "eval" / f"{record['dataset']}.{record['eval_split']}.json")
    save_json(record, out)
    scores = "  ".join(f"{name} {m[key]:.2f}" for key, name in (("acc_base", "base"), ("acc_novel", "novel"),
                                                                 ("hm", "HM"), ("acc_all", "all")) if key in m)
    print(f"{record['method']} ({args.run_dir}) on {record['dataset']} {record['eval_split']}: {scores}")
    print(f"record: {out}")


def _report(args: argparse.Namespace) -> None:
    from anchoropt.api import report

    path = report(args.results[0] if len(args.results) == 1 else args.results, args.out, baseline=args.baseline,
                  schedules=tuple(args.schedule_methods) if args.schedule_methods else None,
                  hm_convention=args.hm_convention, display_names=parse_overrides(args.name),
                  pairs=parse_overrides(args.pair) or None)
    print(f"report: {path}")


def _data_root(args: argparse.Namespace, default: str = TrainConfig.data_root) -> str:
    """The data root of a ``data`` command: its ``data_root=PATH`` (the one config key it takes)."""
    if args.root is not None:
        raise ConfigError(f"--root is gone: name the data root as every command does, data_root={args.root}")
    overrides = parse_overrides(args.overrides)
    unknown = sorted(set(overrides) - {"data_root"})
    if unknown:
        raise ConfigError(f"anchoropt data {args.data_command} takes the key data_root=PATH only, not "
                          f"{', '.join(unknown)}")
    return str(overrides.get("data_root", default))


def _data_toy(args: argparse.Namespace) -> None:
    from anchoropt.toy.datasets import make_toy11

    root = _data_root(args)
    names = make_toy11(Path(root), seed=args.seed, overwrite=args.overwrite)
    print(f"{len(names)} toy datasets under {root}: {', '.join(names)}")


def _data_list(args: argparse.Namespace) -> None:
    from anchoropt.data.datasets import data_root_dir, list_datasets

    root = _data_root(args)
    data_root_dir(root)
    entries = list_datasets(root)
    width = max(len(e.name) for e in entries)
    print(f"datasets under {Path(root).expanduser()}:")
    for e in entries:
        print(f"  {e.name:<{width}}  {e.kind:<8}  {'found  ' if e.found else 'missing'}  {e.marker}")
    found = sum(e.found for e in entries)
    print(f"{found} found, {len(entries) - found} missing (a standard dataset is found by the file shown; "
          f"a custom one is a folder with a meta.json)")


def _data_check(args: argparse.Namespace) -> None:
    from anchoropt.data.check import check_dataset

    args.overrides = [*args.overrides, *(a for a in args.datasets if "=" in a)]
    args.datasets = [a for a in args.datasets if "=" not in a]
    root = _data_root(args)
    if not args.datasets:
        raise ConfigError("anchoropt data check needs at least one DATASET name")
    faulty = []
    print("checking every split: files present and decodable, every class with images, images per class, "
          "description coverage, few-shot pickles consistent")
    for name in args.datasets:
        result = check_dataset(root, name, args.descriptions, args.descriptions_dir, args.n_descriptions)
        print(f"{name}:")
        for line in [*result.lines, *(result.per_class if args.per_class else [])]:
            print(f"  {line}")
        for fault in result.faults:
            print(f"  FAULT {fault}")
        if result.faults:
            faulty.append(f"{name} ({len(result.faults)})")
    if faulty:
        raise ValueError(f"faults found in {len(faulty)} of {len(args.datasets)} datasets: {', '.join(faulty)}")
    print(f"no faults in {', '.join(args.datasets)}")


def _export_openai(args: argparse.Namespace) -> None:
    from anchoropt.backbone import create_backbone
    from anchoropt.export import OPENAI_HEAD_WIDTH, export_openai
    from anchoropt.io import check_output_dir

    cfg = load_config(args.config, args.overrides)
    check_output_dir(Path(args.out).expanduser().parent, "--out")
    backbone = create_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    done = export_openai(backbone, args.out, overwrite=args.overwrite)
    print(f"{done['path']}: {cfg.backbone} ({cfg.pretrained}) in OpenAI's format, fp32, {done['tensors']} tensors; "
          f"read back as OpenAI's builder reads it, features differ by {done['max_abs_diff']:.2g}")
    print(f"{done['config']}: activation {done['activation']}, head width image {done['vision_head_width']} / "
          f"text {done['text_head_width']}, image preprocessing (anchoropt and open_clip read it)")
    unusual = [f"head width {w} (not {OPENAI_HEAD_WIDTH})" for w in {done['vision_head_width'], done['text_head_width']}
               if w != OPENAI_HEAD_WIDTH] + (["GELU (not QuickGELU)"] if done["activation"] == "gelu" else [])
    if unusual:
        print(f"note: OpenAI's clip.build_model infers the architecture from the weights alone and assumes 64-wide "
              f"heads and QuickGELU; this model needs {' and '.join(unusual)} there")


def _run(args: argparse.Namespace) -> None:
    from anchoropt.pipeline import run_main_job

    report = args.report or str(Path(args.results) / "report")
    run_main_job(args.suite, args.results, report, typed_overrides(args.overrides), space=args.space,
                 search_trials=args.search_trials, scheduler=args.scheduler, objective=args.objective,
                 cpus_per_trial=args.cpus_per_trial or 1.0, gpus_per_trial=args.gpus_per_trial or 0.0,
                 max_concurrent=args.max_concurrent, address=args.address, num_cpus=args.num_cpus,
                 verbose=args.verbose, mlflow=_mlflow(args), dry_run=args.dry_run)


def _mlflow(args: argparse.Namespace) -> str | bool | None:
    """The MLflow choice of a command: a URI, False (``--no-mlflow``) or None (as stored)."""
    return False if args.no_mlflow else args.mlflow


def _number(kind: type, low: float, strict: bool = False):
    """An argparse type: ``kind`` at least ``low`` (above it when ``strict``), finite."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{brief(text)} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {low:g}")
        return value
    return parse


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {brief(text)}") from None


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """Resources of Ray Tune trials, shared by search, benchmark and run."""
    p.add_argument("--cpus-per-trial", type=_number(float, 0, strict=True), help="CPUs of one trial (default 1)")
    p.add_argument("--gpus-per-trial", type=_number(float, 0),
                   help="GPUs of one trial, fractions allowed (0.25: four trials per GPU; default 0)")
    p.add_argument("--max-concurrent", type=_number(int, 1), help="at most this many trials at once")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto or ip:6379); default: a local Ray")
    p.add_argument("--num-cpus", type=_number(int, 1), help="CPUs of the local Ray (default: all)")


def config_keys_help() -> str:
    """Every TrainConfig key with its default and meaning (units included), for ``train --help``."""
    from dataclasses import fields

    rows = [(f.name, repr(f.default), KEY_HELP.get(f.name, "")) for f in fields(TrainConfig)]
    w_key, w_default = (max(len(r[i]) for r in rows) for i in (0, 1))
    lines = [f"  {k:<{w_key}}  {d:<{w_default}}  {h}" for k, d, h in rows]
    return "config keys (key=value overrides or --config YAML), default, meaning:\n" + "\n".join(lines)


def _add_data_root(p: argparse.ArgumentParser) -> None:
    """``data_root=PATH``, the key every command names the data root with (``--root`` is refused, naming it)."""
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="data_root=PATH",
                   help=f"the data root (default {TrainConfig.data_root})")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """What search, benchmark and run show and where they log, shared by the three."""
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="show Ray Tune's own output (-v: its trial tables and logs, -vv: more) instead of one "
                        "progress bar per search or benchmark")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print what would run and what is already done, then stop (nothing written)")
    tracking = p.add_mutually_exclusive_group()
    tracking.add_argument("--no-mlflow", action="store_true",
                          help="stop logging to the MLflow URI stored with the search or benchmark")
    tracking.add_argument("--mlflow", metavar="URI",
                          help="also log every trial to this MLflow tracking URI (e.g. sqlite:///mlflow.db; kept "
                               "for resumes and re-runs); TensorBoard files are always written under the "
                               "folder's tensorboard/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchoropt", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"anchoropt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one (dataset, seed, config)",
                       epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of TrainConfig keys")
    p.add_argument("--out", help="output folder (default runs/<dataset>/<method>-...)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. n_anchors=4")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="score a saved run again (no training): base, novel and all classes of "
                                    "its dataset or another (a cross-dataset target)",
                       epilog="keys: dataset (default the run's), eval_split (test, default, or val), data_root, "
                              "cache_dir, device; the rest is the run's own record.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder of anchoropt train --out (record.json, prompts.pt)")
    p.add_argument("--out", help="the evaluation record (default RUN_DIR/eval/<dataset>.<split>.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. dataset=dtd data_root=/data/coop")
    p.set_defaults(func=_eval)

    p = sub.add_parser("search", help="search hyperparameters: Optuna proposes, Ray Tune runs the trials",
                       epilog="anchoropt search show DIR: the state of a search folder (trials done, best trial, "
                              "importances, best trials by HM), read only")
    p.add_argument("--space", help="search space YAML (e.g. search_spaces/anchors.yaml)")
    p.add_argument("--num-trials", type=_number(int, 1), help="total number of trials")
    p.add_argument("--out", help="search folder (trials table, best_config.yaml, plots, study)")
    p.add_argument("--config", help="base configuration YAML (TrainConfig keys); the space updates it")
    p.add_argument("--objective", choices=("val", "test"),
                   help="val: leak-free pseudo base/novel split (default); test: base/novel test images")
    p.add_argument("--sampler", help="Optuna sampler: tpe (default), random, cmaes, qmc, gp, bruteforce")
    p.add_argument("--seed", type=int, help="sampler seed (default 0; reproducible only with --max-concurrent 1)")
    p.add_argument("--scheduler", choices=("none", "asha"),
                   help="asha: stop poor trials early on their per-epoch HM (default none)")
    _add_ray_args(p)
    _add_output_args(p)
    p.add_argument("--storage", help="Optuna RDB URL (e.g. sqlite:///study.db); default a journal file in --out")
    p.add_argument("--enqueue", action="append", metavar="FILE",
                   help="YAML of space parameters (a mapping or a list of them) to run before the sampler's "
                        "draws, after trial 0 (the base config); repeatable")
    p.add_argument("--resume", metavar="DIR", help="resume the interrupted search in DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides, e.g. dataset=dtd")
    p.set_defaults(func=_search)

    p = sub.add_parser("benchmark", help="run every (method, dataset, seed) cell of a suite as Ray Tune trials")
    p.add_argument("suite", help="suite YAML (e.g. benchmarks/toy11.yaml)")
    p.add_argument("--results", required=True, help="folder of the cell records (finished cells are skipped)")
    p.add_argument("--datasets", type=_names, help="only these of the suite's datasets (comma-separated; "
                                                  "cross_dataset: targets)")
    p.add_argument("--seeds", type=_seeds, help="only these of the suite's seeds (comma-separated)")
    p.add_argument("--methods", type=_names, help="only these of the suite's methods (comma-separated)")
    _add_ray_args(p)
    _add_output_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="shared config overrides, e.g. data_root=/data")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("report", help="tables, paired tests and CD diagram from result records")
    p.add_argument("results", nargs="+", help="record files or folders; a main job's results folder (anchoropt run "
                                              "--results) gives its whole report, search sections included")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--baseline", help="method the others are tested against (default: the first)")
    p.add_argument("--schedule-methods", nargs=2, metavar=("ONE_STAGE", "TWO_STAGE"),
                   help="methods compared in the one-stage vs two-stage section")
    p.add_argument("--hm-convention", default="seed_averaged",
                   help="per-dataset HM: seed_averaged (HM of the seed-averaged base and novel, as papers; "
                        "default) or per_seed_mean (mean of the per-seed HMs)")
    p.add_argument("--name", action="append", default=[], metavar="METHOD=NAME",
                   help="display name of a method in tables.tex and figures (repeatable), e.g. coop=CoOp")
    p.add_argument("--pair", action="append", default=[], metavar="METHOD=BASE",
                   help="compare METHOD with its base in the method-matrix section (repeatable), e.g. "
                        "maple_anchoropt=maple (a suite's `pairs`)")
    p.set_defaults(func=_report)

    p = sub.add_parser("data", help="datasets: create the offline toy-11 ones, list what a data root holds")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("toy", help="create the offline toy-11 datasets")
    _add_data_root(p)
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="rewrite datasets already on disk")
    p.set_defaults(func=_data_toy)
    p = data.add_parser("list", help="the standard and custom datasets, found or missing under a root")
    _add_data_root(p)
    p.set_defaults(func=_data_list)
    p = data.add_parser("check", help="check datasets completely: files present, decodable, classes complete, "
                                      "counts per class, description coverage, few-shot pickles consistent")
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="standard or custom dataset names, and "
                                                                  f"data_root=PATH (default {TrainConfig.data_root})")
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--descriptions", default="", help="CuPL JSON to check against (one dataset)")
    p.add_argument("--descriptions-dir", default="", help="folder of the standard datasets' CuPL files")
    p.add_argument("--n-descriptions", type=int, default=TrainConfig.n_descriptions,
                   help=f"sentences each class needs (default {TrainConfig.n_descriptions}; SPEC: 5 for ImageNet)")
    p.add_argument("--per-class", action="store_true", help="print the image count of every class in every split")
    p.set_defaults(func=_data_check, overrides=[])

    p = sub.add_parser("export", help="write a backbone in another format")
    export = p.add_subparsers(dest="export_command", required=True)
    p = export.add_parser("openai", help="write a backbone's weights as an OpenAI-format checkpoint (CoOp's "
                                         "clip.build_model reads it), with open_clip_config.json beside it",
                          description="Writes the weights of backbone=... pretrained=... as a flat fp32 state dict "
                                      "in OpenAI's key names, and its activation, model config and image "
                                      "preprocessing to open_clip_config.json in the same folder (anchoropt "
                                      "reads it back with identical features: backbone=<name> pretrained=FILE).")
    p.add_argument("--out", required=True, help="checkpoint file to write, e.g. exports/toyclip_vit.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the file and its open_clip_config.json")
    p.add_argument("--config", help="YAML file of TrainConfig keys (backbone, pretrained, quick_gelu, preprocess)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. backbone=ToyCLIP-ViT pretrained=toy")
    p.set_defaults(func=_export_openai)

    p = sub.add_parser("run", help="main job: toy data, search both schedules, benchmark, report")
    p.add_argument("--suite", default=str(DEFAULT_SUITE), help="benchmark suite (default the toy-11 suite)")
    p.add_argument("--results", default="results/toy11", help="searches and cell records (default results/toy11)")
    p.add_argument("--report", help="report folder (default RESULTS/report: untracked; the committed example "
                                    "reports/toy11 is made with --report reports/toy11)")
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search space of both schedules")
    p.add_argument("--search-trials", type=_number(int, 0), default=8,
                   help="trials per schedule and dataset: a search each, equal budgets (default 8; 0: no search)")
    p.add_argument("--scheduler", choices=("none", "asha"), default="none",
                   help="the searches' scheduler (default none: every trial runs all its epochs; on toy-11 the "
                        "val HM of trials ASHA stopped early did not rank test HM, README 'What the main job does')")
    p.add_argument("--objective", choices=("val", "test"), default="val", help="search objective (default val)")
    _add_ray_args(p)
    _add_output_args(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="shared config overrides, e.g. data_root=/data backbone=ViT-B-16 pretrained=openai")
    p.set_defaults(func=_run)
    return parser


def _resumable(args: argparse.Namespace) -> str:
    """What an interrupted command leaves that the next run continues from."""
    if args.command == "search":
        folder = args.resume or args.out
        return f"finished trials are kept: resume with `anchoropt search --resume {folder}`"
    if args.command in ("benchmark", "run"):
        return f"finished trials and cells under {args.results} are kept: run the same command again to continue"
    return "nothing of the interrupted run was kept"


def build_show_parser() -> argparse.ArgumentParser:
    """``anchoropt search show DIR`` (its own parser: ``search`` takes key=value words as positionals)."""
    p = argparse.ArgumentParser(prog="anchoropt search show",
                                description="the state of a search folder from its ledger: trials done, best "
                                            "trial, importances, best trials by HM; nothing is rewritten")
    p.add_argument("dir", help="search folder (holds search.json)")
    p.set_defaults(func=_search_show)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides are accepted anywhere after the subcommand,
    before or after its options (argparse alone takes them only in one block)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's preemption, ``kill``): unwinds as Ctrl-C does, so every command stops
    the same resumable way."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def one_line_warnings() -> None:
    """Show anchoropt's own warnings (a class whose descriptions are all empty, a guessed activation)
    as one line each, ``anchoropt: warning: ...``, as its errors are; other libraries' warnings keep
    Python's format, which names their source."""
    package, python_format = os.path.dirname(os.path.abspath(__file__)) + os.sep, warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(package):
            return f"anchoropt: warning: {' '.join(str(message).split())}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = formatted


def main(argv: list[str] | None = None) -> None:
    one_line_warnings()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        # Ctrl-C must stop every command resumably even when the parent left SIGINT ignored or
        # blocked (inherited across exec, e.g. from a process that had started Ray)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # the reader went away (``anchoropt ... | head``): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush cannot fail again
        sys.exit(141)  # 128 + SIGPIPE, the shell's code for a writer whose reader closed


def _main(argv: list[str]) -> None:
    args = build_show_parser().parse_args(argv[2:]) if argv[:2] == ["search", "show"] else parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:
        raise
    except Exception as err:  # noqa: BLE001  (user errors become one line; the rest re-raise)
        if (stop := interrupt_of(err)) is not None:
            _interrupted(args, stop)
        if not isinstance(err, _user_errors()):
            raise
        print(f"anchoropt: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        _interrupted(args, stop)


def _interrupted(args: argparse.Namespace, stop: KeyboardInterrupt) -> None:
    """One line saying what is kept; exit 130 for Ctrl-C, 143 (128 + 15) for SIGTERM, as shells do."""
    terminated = isinstance(stop, Terminated)
    print(f"anchoropt: {'terminated (SIGTERM)' if terminated else 'interrupted'}; {_resumable(args)}",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # Ray's threads torn down at interpreter exit can abort it
        ray.shutdown()
    sys.exit(143 if terminated else 130)


if __name__ == "__main__":
    main()
