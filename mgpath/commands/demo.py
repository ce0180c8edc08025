"""End-to-end MGPATH demo on generated slides, on the CPU.

Writes --slides_per_class slides of two visibly different generated tissues, tiles them at 10x and 5x,
extracts features with a small randomly initialised ViT, makes K-shot patient-grouped splits, fits MGPATH
(configs/wsi/demo_tiny.yaml), tests the best-validation checkpoint, draws heatmaps and compares every other
method of `mgpath benchmark` that needs no publisher's weights on the same split, one progress line each.
The classes differ in colour: this checks the pipeline, not the method.

example:
  mgpath demo --out demo_run
"""
from __future__ import annotations

import argparse
import json
import sys

from vapt.cli.flags import DialectParser

__all__ = ["build_parser", "main"]


def build_parser() -> DialectParser:
    ap = DialectParser(prog="mgpath demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="mgpath_demo", help="output folder (mgpath_demo)")
    ap.add_argument("--slides_per_class", type=int, default=10, help="generated slides per class (10)")
    ap.add_argument("--shots", type=int, default=4, help="training slides per class (4)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of slides, split and training (0)")
    ap.add_argument("--augment", action="store_true", help="add bags of rotated/flipped tiles to training")
    ap.add_argument("--verbose", action="store_true", help="also show Lightning's own log lines and warnings")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``mgpath demo``: parse (``--help`` needs no model code), then run the demo and print its result."""
    a = build_parser().parse_args(argv)
    import contextlib

    from mgpath.demo import run_demo
    from vapt.quiet import lightning_info_hidden, quiet_command

    with quiet_command() if not a.verbose else contextlib.nullcontext(), lightning_info_hidden(not a.verbose):
        res = run_demo(a.out, a.slides_per_class, a.shots, a.epochs, seed=a.seed, augment=a.augment, log=print)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
