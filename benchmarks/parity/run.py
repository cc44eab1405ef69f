"""Parity of this project's trainer with the authors' (ATPrompt repository, on Dassl): both train CoOp
and CoOp+AnchorOPT on the same toy datasets, weights, few-shot images and options, per seed; a
per-seed table and Welch's t-test per (dataset, method) on base, novel and HM.

Steps (each skipped when its output exists, so an interrupted run continues):
1. two toy datasets (``anchoropt.toy``) presented in Dassl's layouts: the first as DTD
   (``dtd/images``, ``split_zhou_DescribableTextures.json``), the second as Caltech101
   (``caltech-101/101_ObjectCategories``, ``split_zhou_Caltech101.json``), their descriptions as the
   CuPL files the reference's Stage I opens (``templates/texture_prompts_full.json``,
   ``templates/cal_prompts_full.json``);
2. ToyCLIP-ViT exported in OpenAI's format (``anchoropt export openai``);
3. the reference, one child process per run (``reference_child.py``: the run-time adaptations):
   Stage I (``CoOp_Pretrain_Anchor``, seed 1, as the authors ship one anchor file per dataset) into
   ``anchor_weights/<Dataset>/``, then per seed ``CoOp`` and ``CoOp_AnchorOPT`` trained on the base
   classes and evaluated on base (after training) and novel (``--eval-only``), as the authors'
   scripts do; Dassl writes the few-shot pickles ``split_fewshot/shot_16-seed_S.pkl``;
4. this project's trainer with the reference's options on the very same files (it reuses those
   pickles, so both train on the same images);
5. the table (printed, and written to ``WORK/parity.md``).

Usage:
    python benchmarks/parity/run.py --atprompt /src/ATPrompt --work /tmp/parity \
        [--dassl /src/Dassl.pytorch] [--python /venv/bin/python] [--seeds 1 2 3 4 5] [--epochs 10]

The reference's Python needs Dassl's dependencies (yacs, tabulate, tensorboard, gdown, ftfy, regex)
beside this project's; ``--python`` names such an interpreter (e.g. a venv made with
``--system-site-packages``).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: toy dataset -> (Dassl dataset name, config file, folder, image folder, split file, CuPL file, anchor folder)
LAYOUTS = [("DescribableTextures", "dtd", "dtd", "images", "split_zhou_DescribableTextures.json",
            "texture_prompts_full.json", "DTD"),
           ("Caltech101", "caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
            "cal_prompts_full.json", "Caltech101")]
HEAD_WIDTH = 32  # ToyCLIP-ViT's attention head width (OpenAI's builder assumes 64)


def prepare(work: Path, toy: list[str]) -> None:
    """Toy datasets in Dassl layouts, their descriptions as the reference's CuPL files, the weights."""
    from anchoropt.toy.datasets import make_toy11

    make_toy11(work / "toy", names=toy)
    for name, (_, _, folder, images, split, cupl, _) in zip(toy, LAYOUTS):
        src, dst = work / "toy" / name, work / "data" / folder
        meta = json.loads((src / "meta.json").read_text())
        dst.mkdir(parents=True, exist_ok=True)
        if not (dst / images).exists():
            (dst / images).symlink_to((src / meta["image_dir"]).resolve())
        shutil.copyfile(src / meta["split_file"], dst / split)
        (work / "ref_cwd" / "templates").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / meta["descriptions"], work / "ref_cwd" / "templates" / cupl)
    if not (work / "toyclip_vit.pt").exists():
        subprocess.run([sys.executable, "-m", "anchoropt", "export", "openai", "--out", str(work / "toyclip_vit.pt"),
                        "backbone=ToyCLIP-ViT", "pretrained=toy"], check=True)


def reference(args, work: Path, layout: tuple, method: str, seed: int) -> dict:
    """One reference run (train on base, score base; score novel), its accuracies in percent."""
    dassl_name, config, *_, anchor_dir = layout
    out = work / "ref_out" / config / method / f"seed{seed}"
    common = ["--root", str(work / "data"), "--seed", str(seed), "--dataset-config-file",
              f"{args.atprompt}/configs/datasets/{config}.yaml", "--config-file",
              f"{args.atprompt}/configs/trainers/CoOp/vit_b16.yaml"]
    opts = ["INPUT.SIZE", "(64, 64)", "DATALOADER.NUM_WORKERS", "0", "USE_CUDA", "False",
            "DATASET.NUM_SHOTS", "16", "TRAINER.COOP.PREC", "fp32"]
    if method == "CoOp":
        opts += ["TRAINER.COOP.N_CTX", "16", "TRAINER.COOP.CSC", "False", "TRAINER.COOP.CLASS_TOKEN_POSITION", "end",
                 "OPTIM.MAX_EPOCH", str(args.epochs)]
    elif method == "CoOp_AnchorOPT":
        opts += ["TRAINER.ANCHOROPT.N_CTX", "4", "TRAINER.ANCHOROPT.ANCHOR_LEN", "1", "TRAINER.ANCHOROPT.GUMBEL_TEMP",
                 "1.0", "TRAINER.ANCHOROPT.PROMPT_CE_WEIGHT", "100.0", "TRAINER.ANCHOROPT.KD_WEIGHT", "1000.0",
                 "TRAINER.ANCHOROPT.KD_TEMPERATURE", "1.0", "TRAINER.ANCHOROPT.MAX_TEMPLATE_LENGTH", "10",
                 "OPTIM.MAX_EPOCH", str(args.epochs)]
    else:  # CoOp_Pretrain_Anchor: Stage I
        opts += ["TRAINER.ANCHOROPT.N_CTX", "4", "TRAINER.ANCHOROPT.ANCHOR_LEN", "1",
                 "TRAINER.ANCHOROPT.ANCHOR_MSE_WEIGHT", "1.0", "TRAINER.ANCHOROPT.MAX_TEMPLATE_LENGTH", "10",
                 "OPTIM.MAX_EPOCH", str(args.anchor_epochs)]
    result = {}
    for split in ("base", "new"):
        log = out / f"{split}.log"
        if not log.exists() or "* accuracy:" not in log.read_text():
            mode = ["--output-dir", str(out)] if split == "base" else \
                ["--output-dir", str(out / "eval_new"), "--eval-only", "--model-dir", str(out), "--load-epoch",
                 str(args.anchor_epochs if method == "CoOp_Pretrain_Anchor" else args.epochs)]
            command = [args.python, str(HERE / "reference_child.py"), args.atprompt, args.dassl,
                       str(work / "toyclip_vit.pt"), str(HEAD_WIDTH), "--", *common, "--trainer", method, *mode,
                       *opts, "DATASET.SUBSAMPLE_CLASSES", split]
            out.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as handle:
                done = subprocess.run(command, cwd=work / "ref_cwd", stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                sys.exit(f"reference {method} {config} seed {seed} ({split}) failed: see {log}")
        result[split] = float(re.findall(r"\* accuracy: ([\d.]+)%", log.read_text())[-1])
        if method == "CoOp_Pretrain_Anchor":
            break
    return result


def install_anchors(work: Path, layout: tuple, epochs: int) -> None:
    """The reference's Stage I result where its Stage II trainer opens it (anchor_weights/<Dataset>/)."""
    _, config, *_, anchor_dir = layout
    found = work / "ref_out" / config / "CoOp_Pretrain_Anchor" / "seed1" / "anchor_prompt_learner"
    target = work / "ref_cwd" / "anchor_weights" / anchor_dir / "anchor_prompt_learner" / "model.pth.tar"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found / f"model.pth.tar-{epochs}", target)


def ours(args, work: Path, layout: tuple, toy: str, method: str, seed: int) -> dict:
    """This project's trainer with the reference's options, on the same files."""
    from anchoropt.config import load_config
    from anchoropt.train import train

    _, config, *_ = layout
    record_path = work / "ours" / config / method / f"seed{seed}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())["metrics"]
    common = dict(dataset=config, data_root=str(work / "data"), seed=seed, shots=16, backbone="ToyCLIP-ViT",
                  pretrained=str(work / "toyclip_vit.pt"), descriptions=str(work / "toy" / toy / "descriptions.json"),
                  cache_dir=str(work / "cache"), epochs=args.epochs, batch_size=32, lr=0.002, warmup_epochs=1,
                  warmup_lr=1e-5, crop_scale=0.08, flip=True, device="cpu")
    if method == "CoOp":
        cfg = load_config(overrides={**common, "method": "coop", "n_ctx": 16})
    else:
        cfg = load_config(overrides={**common, "method": "anchoropt", "schedule": "two_stage", "n_ctx": 4,
                                     "n_anchors": 1, "ce_weight": 100.0, "kd_weight": 1000.0, "kd_temperature": 1.0,
                                     "mse_weight": 1.0, "anchor_epochs": args.anchor_epochs, "n_descriptions": 10,
                                     # the reference's two behaviours this project departs from by default
                                     "position_eval": "sample", "eos_index": "reference"})
    record = train(cfg)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record))
    return record["metrics"]


def table(rows: list[dict]) -> str:
    """Per-seed rows and, per (dataset, method), means and Welch's t-test (scipy) of each metric."""
    import numpy as np
    from scipy.stats import ttest_ind

    lines = ["| dataset | method | seed | reference base / novel / HM | ours base / novel / HM |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['seed']} | "
                     f"{r['ref_base']:.1f} / {r['ref_novel']:.1f} / {r['ref_hm']:.1f} | "
                     f"{r['our_base']:.1f} / {r['our_novel']:.1f} / {r['our_hm']:.1f} |")
    lines += ["", "| dataset | method | seeds | metric | reference mean (sd) | ours mean (sd) | ours - reference | "
                  "Welch t | p |", "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["dataset"], r["method"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["method"]) == key]
        for metric in ("base", "novel", "hm"):
            ref = np.array([r[f"ref_{metric}"] for r in group])
            our = np.array([r[f"our_{metric}"] for r in group])
            if len(group) < 2:  # Welch's test and standard deviations need two seeds or more
                sd_ref = sd_our = t = pvalue = "-"
            else:
                test = ttest_ind(our, ref, equal_var=False)
                sd_ref, sd_our = f"{ref.std(ddof=1):.2f}", f"{our.std(ddof=1):.2f}"
                t, pvalue = f"{test.statistic:.2f}", f"{test.pvalue:.3f}"
            lines.append(f"| {key[0]} | {key[1]} | {len(group)} | {metric} | {ref.mean():.2f} ({sd_ref}) | "
                         f"{our.mean():.2f} ({sd_our}) | {our.mean() - ref.mean():+.2f} | {t} | {pvalue} |")
    return "\n".join(lines)


def hm(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel) if base + novel else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atprompt", required=True, help="checkout of github.com/zhengli97/ATPrompt")
    parser.add_argument("--dassl", help="checkout of Dassl.pytorch (default: the copy inside --atprompt)")
    parser.add_argument("--work", required=True, help="working folder (data, weights, runs, the table)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the reference runs (Dassl's deps)")
    parser.add_argument("--toy", nargs=2, default=["toy_shape", "toy_colour"], help="the two toy datasets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--epochs", type=int, default=10, help="CoOp and Stage II epochs of both trainers")
    parser.add_argument("--anchor-epochs", type=int, default=5, help="Stage I epochs of both trainers")
    args = parser.parse_args(argv)
    args.atprompt = str(Path(args.atprompt).resolve())
    args.dassl = str(Path(args.dassl or Path(args.atprompt) / "Dassl.pytorch").resolve())
    work = Path(args.work).resolve()
    prepare(work, args.toy)
    rows = []
    for toy, layout in zip(args.toy, LAYOUTS):
        reference(args, work, layout, "CoOp_Pretrain_Anchor", 1)
        install_anchors(work, layout, args.anchor_epochs)
        for method in ("CoOp", "CoOp_AnchorOPT"):
            for seed in args.seeds:
                ref = reference(args, work, layout, method, seed)
                our = ours(args, work, layout, toy, method, seed)
                rows.append({"dataset": f"{toy} (as {layout[1]})", "method": method, "seed": seed,
                             "ref_base": ref["base"], "ref_novel": ref["new"], "ref_hm": hm(ref["base"], ref["new"]),
                             "our_base": our["acc_base"], "our_novel": our["acc_novel"], "our_hm": our["hm"]})
                print(f"{toy} {method} seed {seed}: reference {ref['base']:.1f} / {ref['new']:.1f}, "
                      f"ours {our['acc_base']:.1f} / {our['acc_novel']:.1f}", flush=True)
    text = table(rows)
    (work / "parity.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
