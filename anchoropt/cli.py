"""Command line: ``anchoropt train|data|...``. Errors in user input print one line and exit 2."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from anchoropt.backbone import BackboneError
from anchoropt.config import ConfigError, load_config
from anchoropt.data import DataError
from anchoropt.train import NonFiniteLoss

USER_ERRORS = (ConfigError, DataError, BackboneError, NonFiniteLoss, FileNotFoundError)


def _train(args: argparse.Namespace) -> None:
    from anchoropt.train import train

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.dataset / \
        f"{cfg.method}-{cfg.schedule}-seed{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"

    def report(m: dict) -> None:
        tqdm.write(f"epoch {m['epoch']:>3}  loss {m['loss']:.4f}  base {m['acc_base']:.2f}  "
                   f"novel {m['acc_novel']:.2f}  HM {m['hm']:.2f}")

    record = train(cfg, out_dir=out, report=report)
    m = record["metrics"]
    print(f"{cfg.dataset} seed {cfg.seed} {record['method']}: base {m['acc_base']:.2f}  "
          f"novel {m['acc_novel']:.2f}  HM {m['hm']:.2f}  ({record['wall_time_s']:.1f} s)")
    print(f"record: {out / 'record.json'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchoropt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one (dataset, seed, config)")
    p.add_argument("--config", help="YAML file of TrainConfig keys")
    p.add_argument("--out", help="output folder (default runs/<dataset>/<method>-...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. n_anchors=4")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"anchoropt: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
