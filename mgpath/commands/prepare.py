"""``mgpath prepare``: slides -> tissue -> tile coordinates -> features (and augmented bags) in one job folder.

The steps of ``mgpath tile`` and ``mgpath extract`` in one command, as TRIDENT's ``--task all``; the
single-step commands stay. Job folder layout::

    OUT/tiles/<tag>/coords/<slide_id>.h5      coordinates per slide and resolution (mgpath tile)
    OUT/tiles/summary.csv|json                the tiling step's summary
    OUT/features/<tag>/<slide_id>.h5          features per slide and resolution (mgpath extract)
    OUT/features/augmented/<tag>/...          augmented bags (--augment)
    OUT/summary.csv|json                      one summary: one row per slide and step (tile, features, augmented)

Resumable: rerunning the same command keeps every finished output (``cached``) and redoes only what is
missing or stale; the features equal byte for byte those of ``mgpath tile`` then ``mgpath extract``.
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from mgpath.commands.extract import add_encoder_options, load_encoder, run_extraction
from mgpath.commands.tile import add_run_options, add_tile_options, exit_on_sigterm, tile_settings
from mgpath.pipelines.jobs import find_jobs
from mgpath.pipelines.summary import count_statuses, format_rows, write_summary_files
from mgpath.pipelines.tile import tile_slides
from vapt.cli.errors import report_error
from vapt.cli.flags import DialectParser

__all__ = ["SUMMARY_FIELDS", "build_parser", "main"]

SUMMARY_FIELDS = ["slide_id", "step", "status", "reason", "tiles", "seconds", "out", "path"]


def build_parser() -> argparse.ArgumentParser:
    p = DialectParser(prog="mgpath prepare", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or folders of slides")
    p.add_argument("--out", required=True, help="the job folder (layout above)")
    add_tile_options(p)
    add_encoder_options(p)
    add_run_options(p, "slides tiled in parallel (processes), and DataLoader workers reading tiles")
    return p


def _tile_row(row: dict) -> dict:
    tiles = sum(v for k, v in row.items() if k.startswith("tiles_") and isinstance(v, int))
    return {**row, "step": "tile", "tiles": tiles, "out": row.get("out")}


def main(argv: list[str] | None = None) -> int:
    """``mgpath prepare``. Exit status 0 when every step of every slide is done or cached, 1 otherwise."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    tiles_dir, features_dir = out / "tiles", out / "features"
    try:
        tps, tissue, mpp = tile_settings(args)
        encoder, weights = load_encoder(args, "mgpath prepare")
    except (FileNotFoundError, ValueError, OSError) as e:
        return report_error("mgpath prepare", e)
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # so that the tiling worker pool ends with this process
    tiled = tile_slides(args.inputs, tiles_dir, tps, tissue_params=tissue, mpp=mpp, workers=args.workers,
                        overwrite=args.overwrite, recursive=args.recursive, progress=not args.no_progress)
    jobs, problems = find_jobs(tiles_dir, features_dir, None, args.mpp)
    args.slides = None  # the slides are found through the path each coordinates file records
    featured = run_extraction(args, jobs, tiles_dir, features_dir, encoder, weights)
    # Lightning: imported when the job runs, not for --help
    from mgpath.pipelines.augment import AUGMENTED_DIR

    augmented = str(features_dir / AUGMENTED_DIR)
    rows = [_tile_row(r) for r in tiled] + [
        {**r, "step": "augmented" if str(r.get("out") or "").startswith(augmented) else "features"}
        for r in problems + featured]
    n = count_statuses(rows)
    print(f"{len(tiled)} slides, {len(rows)} steps: {n['done']} done, {n['cached']} cached, {n['skipped']} skipped")
    print("\n".join(format_rows(rows, lambda r: f"{r['step']:<8} {r['slide_id']} ({r.get('tiles', '?')} tiles)")))
    print(f"summary: {write_summary_files(rows, out, 'summary', SUMMARY_FIELDS)}")
    return 0 if all(r["status"] in ("done", "cached") for r in rows) else 1
