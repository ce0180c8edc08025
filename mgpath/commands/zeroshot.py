"""Classify slides from the class descriptions alone, without training.

Each description of a class becomes one prompt set (the learned context vectors are off); the visual tokens
are the image-adapted tiles (--tokens tiles) or the model's visual prompts (--tokens prompts). The result is
meaningful only with aligned adaptors, e.g. a PLIP-G alignment file converted by `mgpath import-official`.
Other options (--model.init_checkpoint FILE, --data.fold 1, ...) go to the config as in `mgpath fit`.

example:
  mgpath zeroshot --config configs/wsi/tcga_nsclc_16shot.yaml --part test --out zeroshot.csv
"""
from __future__ import annotations

import argparse
import sys

from vapt.cli.flags import DialectParser, add_config_options, print_configs
from vapt.fileio.resources import resolve_config

__all__ = ["build_parser", "main"]


def build_parser() -> DialectParser:
    ap = DialectParser(prog="mgpath zeroshot", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, help="an MGPATH config (model + data blocks)")
    ap.add_argument("--part", default="test", choices=["train", "val", "test"],
                    help="which part of the split to classify (test)")
    ap.add_argument("--tokens", default="tiles", choices=["tiles", "prompts"],
                    help="visual side: the adapted tile features (tiles) or the model's visual prompts (prompts)")
    ap.add_argument("--out", default=None, help="CSV of per-slide probabilities")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``mgpath zeroshot``: parse (``--help`` needs no model code), then classify."""
    args, overrides = build_parser().parse_known_args(argv)
    if args.print_config:
        return print_configs(args.config, lambda c: resolve_config(c, ("", "wsi/"), lister="mgpath configs"))
    from mgpath.zeroshot import run

    return run(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
