"""``mgpath tile``: segment tissue and tile slides into one coordinates h5 per slide and resolution.

Output layout: see :mod:`mgpath.pipelines.tile`.
"""

from __future__ import annotations

import argparse
import csv
import signal
from pathlib import Path

from mgpath.pipelines import tile as pipeline
from mgpath.pipelines.tile import format_summary, tile_slides
from mgpath.slides.grid import TileParams
from mgpath.slides.reader import check_mpp_override, slide_id_from_path
from mgpath.slides.tissue import TissueParams
from vapt.cli.errors import report_error
from vapt.cli.flags import DialectParser

__all__ = ["add_run_options", "add_tile_options", "build_parser", "main", "tile_settings"]


def _read_mpp_csv(path: str) -> dict[str, float]:
    """``slide_id,mpp`` (or TRIDENT's ``wsi,mpp``) CSV -> dict."""
    out = {}
    with open(path, newline="") as f:
        for row, r in enumerate(csv.DictReader(f), start=2):
            key = r.get("slide_id") or r.get("wsi") or r.get("slide")
            if key is None or "mpp" not in r:
                raise ValueError(f"{path} needs columns slide_id (or wsi) and mpp")
            out[slide_id_from_path(key)] = check_mpp_override(r["mpp"], f"--mpp-csv {path} row {row} ({key})")
    return out


def exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    p = DialectParser(
        prog="mgpath tile",
        description=pipeline.__doc__.split("\n\n")[0],
        epilog="\n\n".join(pipeline.__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or folders of slides")
    p.add_argument("--out", required=True, help="output folder: <mag>/coords/<slide>.h5, masks, previews and summary.csv (layout below)")
    add_tile_options(p)
    add_run_options(p)
    return p


def add_run_options(p: DialectParser, workers_help: str = "slides processed in parallel (processes)") -> None:
    """How a batch of slides runs: ``--workers``, ``--mpp``, ``--overwrite``, ``--recursive``, ``--no_progress``."""
    p.add_argument("--workers", type=int, default=1, help=workers_help)
    p.add_argument("--mpp", type=float, default=None, help="level-0 um/px override for every slide")
    p.add_argument("--overwrite", action="store_true", help="redo slides whose outputs already exist")
    p.add_argument("--recursive", action="store_true", help="search folders of slides recursively")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def add_tile_options(p: DialectParser) -> None:
    """The tiling and tissue options of ``mgpath tile`` (also those of ``mgpath prepare``)."""
    p.add_argument(
        "--magnification",
        type=float,
        nargs="+",
        default=None,
        help="target magnification(s), e.g. 10 5 (10x = 1.0 um/px); default 10",
    )
    p.add_argument(
        "--mpp_target", type=float, nargs="+", default=None, help="target um/px instead of magnification"
    )
    p.add_argument("--tile_size", type=int, default=256, help="tile pixels at the target resolution (256)")
    p.add_argument("--overlap", type=int, default=0, help="overlap in target pixels (0)")
    p.add_argument("--min_tissue", type=float, default=0.5, help="minimum tissue fraction per tile (0.5)")
    p.add_argument("--no_tissue", action="store_true", help="keep every grid tile (no tissue filter)")
    p.add_argument("--edge", action="store_true", help="keep tiles crossing the right/bottom border")
    p.add_argument(
        "--mpp_csv", default=None, help="CSV with columns slide_id (or wsi) and mpp: per-slide override"
    )
    p.add_argument(
        "--seg_mpp", type=float, default=TissueParams.seg_mpp, help="um/px of the segmentation image (4; finer on small slides)"
    )
    p.add_argument("--threshold", choices=["fixed", "otsu"], default=TissueParams.threshold,
                   help="tissue threshold on saturation: fixed (--min-saturation) or otsu (per slide)")
    p.add_argument(
        "--min_saturation",
        type=int,
        default=TissueParams.min_saturation,
        help="saturation threshold 0-255 (fixed) / floor (otsu) (15)",
    )
    p.add_argument(
        "--min_tissue_area",
        type=float,
        default=TissueParams.min_tissue_mm2,
        help="drop tissue pieces under this many mm^2 (0.05)",
    )
    p.add_argument(
        "--min_hole_area",
        type=float,
        default=TissueParams.min_hole_mm2,
        help="fill holes under this many mm^2 (0.01)",
    )


def tile_settings(args: argparse.Namespace) -> tuple[list[TileParams], TissueParams, float | dict | None]:
    """``(tile params per resolution, tissue params, mpp override)`` from parsed tile options."""
    tps = []
    if args.mpp_target:
        tps += [
            TileParams(
                args.tile_size, None, m, args.overlap, args.min_tissue, not args.no_tissue, args.edge
            )
            for m in args.mpp_target
        ]
    mags = args.magnification or ([] if args.mpp_target else [10.0])
    tps += [
        TileParams(args.tile_size, m, None, args.overlap, args.min_tissue, not args.no_tissue, args.edge)
        for m in mags
    ]
    tissue = TissueParams(
        seg_mpp=args.seg_mpp,
        threshold=args.threshold,
        min_saturation=args.min_saturation,
        min_tissue_mm2=args.min_tissue_area,
        min_hole_mm2=args.min_hole_area,
    )
    mpp = _read_mpp_csv(args.mpp_csv) if args.mpp_csv else args.mpp
    if args.mpp is not None:
        check_mpp_override(args.mpp, "--mpp")
    return tps, tissue, mpp


def main(argv: list[str] | None = None) -> int:
    """``mgpath tile``. Exit status 0 when every slide is done or cached, 1 when some were skipped."""
    args = build_parser().parse_args(argv)
    try:
        tps, tissue, mpp = tile_settings(args)
    except (ValueError, OSError) as e:
        return report_error("mgpath tile", e)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # so that the worker pool is ended with this process
    rows = tile_slides(
        args.inputs,
        args.out,
        tps,
        tissue_params=tissue,
        mpp=mpp,
        workers=args.workers,
        overwrite=args.overwrite,
        recursive=args.recursive,
        progress=not args.no_progress,
    )
    print(format_summary(rows, [tp.tag for tp in tps]))
    print(f"summary: {Path(args.out) / 'summary.csv'}")
    return 0 if all(r["status"] in ("done", "cached") for r in rows) else 1


