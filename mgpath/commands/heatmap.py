"""Draw, over a slide thumbnail, where a trained MGPATH looks and which class each region supports.

Per magnification: the attention of the visual prompts on each tile, and per class each tile's share of the
class's transported similarity (relative to the class average). Each slide gets one page (PNG) with panels of
at least 1024 px; a folder of slides also gets index.html, index.png and index.csv (docs/heatmaps.md).

examples:
  mgpath heatmap --ckpt_path best.ckpt --slide slides/x.tiff --features_root features --out x.png
  mgpath heatmap --ckpt_path best.ckpt --slides slides/ --features_root features --out heatmaps/
"""
from __future__ import annotations

import argparse
import sys

from vapt.cli.flags import DialectParser

__all__ = ["build_parser", "main"]


def build_parser() -> DialectParser:
    ap = DialectParser(prog="mgpath heatmap", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt_path", required=True, deprecated=("--ckpt",),
                    help="Lightning checkpoint of MGPATHModule (e.g. the best one of fit)")
    ap.add_argument("--colouring", choices=("value", "rank"), default="value",
                    help="value: colours span each map's real value range (default); rank: each tile's percentile "
                         "rank among the slide's tiles (the colour bars say so)")
    ap.add_argument("--slide", "--slides", dest="slide", required=True,
                    help="a slide file, or a folder of slides (then --out is a folder: one PNG per slide + index)")
    ap.add_argument("--recursive", action="store_true", help="with a folder of --slides: its subfolders too")
    ap.add_argument("--features_root", default=None, help="folder with <mag>/<slide_id>.h5")
    ap.add_argument("--features", nargs="*", default=None, help="explicit MAG=FILE pairs, e.g. 5x=a.h5 10x=b.h5")
    ap.add_argument("--slide_id", default=None, help="default: the slide file name without extension")
    ap.add_argument("--mpp", type=float, default=None,
                    help="level-0 microns per pixel, for slides whose files lack it (e.g. 0.25 for 40x)")
    ap.add_argument("--max_size", type=int, default=1024,
                    help="thumbnail long side in px (each panel is drawn at least 1024 px long)")
    ap.add_argument("--out", required=True, help="output PNG (a folder when --slide is a folder)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``mgpath heatmap``: parse (``--help`` needs no model code), then draw."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from mgpath.heatmap import run

    return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
