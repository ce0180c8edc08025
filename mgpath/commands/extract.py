"""``mgpath extract``: encode the tiles of every slide with a frozen encoder into one features h5 per slide.

The pipeline (Lightning, torch) is imported when it runs, after the arguments are parsed, so ``--help`` answers
at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vapt.cli.errors import report_error
from vapt.cli.flags import DialectParser

if TYPE_CHECKING:
    import torch

__all__ = ["add_encoder_options", "build_parser", "load_encoder", "main", "run_extraction"]


def build_parser() -> argparse.ArgumentParser:
    p = DialectParser(prog="mgpath extract", description=(
        "Tile features from a frozen encoder, one h5 per slide and magnification (features, coords, adjacency). "
        "Tiles are read inside DataLoader workers, resized once to the encoder's input and normalised with its "
        "mean/std; finished slides are kept on a rerun, stale ones reported."))
    p.add_argument(
        "--coords",
        required=True,
        help="`mgpath tile` output folder, or a folder of coordinate h5 "
        "files (mgpath, CLAM patches/, TRIDENT patches/)",
    )
    p.add_argument("--slides", default=None, help="folder with the slides (found by slide id)")
    add_encoder_options(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers reading tiles")
    p.add_argument("--mpp", type=float, default=None, help="level-0 um/px override for the slides")
    p.add_argument("--overwrite", action="store_true", help="redo slides whose features exist or are stale")
    p.add_argument("--recursive", action="store_true", help="search the subfolders of --slides too")
    p.add_argument("--no_progress", action="store_true", help="no progress bar or progress lines")
    return p


def add_encoder_options(p: DialectParser) -> None:
    """The encoder and extraction options of ``mgpath extract`` (also those of ``mgpath prepare``)."""
    p.add_argument("--encoder", required=True,
                   help="preset (uni_v1, conch_v1, virchow2, resnet50, ...: `mgpath encoders`), timm model name or "
                   "open_clip:<name>")
    p.add_argument("--checkpoint", default=None,
                   help="the encoder's local weights: a file, the publisher's model folder or a hub-cache folder")
    p.add_argument("--img_size", type=int, default=None, help="encoder input size (default: the encoder's)")
    p.add_argument("--encoder_kwargs", default=None, metavar="JSON",
                   help='preset options / timm keywords, e.g. \'{"output": "trident"}\' for conch_v1')
    p.add_argument("--mean", type=float, nargs=3, default=None, help="override the encoder's normalisation mean")
    p.add_argument("--std", type=float, nargs=3, default=None, help="override the encoder's normalisation std")
    p.add_argument("--batch_size", type=int, default=64, help="tiles per forward pass (64)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu, gpu, auto (auto)")
    p.add_argument("--devices", default="auto", help="Lightning devices (e.g. 1, 4, auto)")
    p.add_argument("--num_nodes", type=int, default=1, help="machines for multi-node extraction (1)")
    p.add_argument(
        "--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32-true on CPU)"
    )
    p.add_argument("--random_seed", type=int, default=0,
                   help="seed of the random weights used when no --checkpoint is given (0); part of the cache "
                   "identity, so a resumed run never mixes two random encoders")
    p.add_argument("--augment", action="store_true",
                   help="also write augmented bags (every tile randomly rotated by 90 deg k times and flipped, "
                   "as the paper's training copy) into OUT/augmented/<mag>/ (read with data.augmented: true); "
                   "done once, resumable like the plain features")
    p.add_argument("--augment_seed", type=int, default=0, help="seed of the per-tile augmentation (0)")
    p.add_argument("--reader", choices=["openslide", "fast"], default="fast",
                   help="fast (default): read JPEG-tiled svs/TIFF tiles directly (each decoded once, reduced-scale "
                        "DCT decode; about 4x the tiles/s per core), other formats with OpenSlide; openslide: "
                        "every slide with OpenSlide")


def _encoder_kwargs(text: str | None) -> dict:
    import json

    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except ValueError as err:
        raise ValueError(f"--encoder-kwargs {text!r} is not JSON ({err}); e.g. '{{\"output\": \"trident\"}}'") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--encoder-kwargs must be a JSON object, got {text!r}")  # noqa: TRY004 - a user error
    return kwargs


def load_encoder(args: argparse.Namespace, prog: str) -> tuple[torch.nn.Module, str]:
    """The frozen encoder the encoder options name, and the description of its weights (cache identity)."""
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist; give the encoder's local "
                                "weights file or model folder")
    kwargs = _encoder_kwargs(args.encoder_kwargs)
    import torch

    from mgpath.pipelines.extract import weights_description
    from vapt.backbones import build_encoder
    from vapt.backbones.files import resolve

    if not args.checkpoint:
        torch.manual_seed(args.random_seed)  # same run -> same random encoder -> same features
    encoder = build_encoder(args.encoder, checkpoint=args.checkpoint, img_size=args.img_size, mean=args.mean,
                            std=args.std, **kwargs)
    if not args.checkpoint:
        print(f"{prog}: WARNING: no --checkpoint given: {args.encoder} has RANDOM weights "
              f"(seed {args.random_seed}); these features are for testing only, not for real results",
              file=sys.stderr)
    weights_file = str(resolve(args.checkpoint).file) if args.checkpoint else None  # a folder's weights file
    weights = weights_description(weights_file, args.random_seed)
    return encoder, weights


def run_extraction(args: argparse.Namespace, jobs: list, coords, out, encoder: torch.nn.Module,
                   weights: str) -> list[dict]:
    """Features of ``jobs`` into ``out`` (and augmented bags from ``coords`` with ``--augment``); summary rows."""
    from mgpath.pipelines.extract import extract_features
    from mgpath.pipelines.locks import clean_temp

    if (
        "LOCAL_RANK" not in os.environ and Path(out).exists()
    ):  # launcher process, before any DDP rank starts
        clean_temp(Path(out))  # temporary files a killed run left behind
    devices = (
        args.devices
        if args.devices == "auto"
        else (int(args.devices) if args.devices.isdigit() else args.devices)
    )
    rows = extract_features(
        jobs,
        encoder,
        args.encoder,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        accelerator=args.accelerator,
        devices=devices,
        precision=args.precision,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        num_nodes=args.num_nodes,
        weights=weights,
        reader=args.reader,
    )
    if args.augment:
        from mgpath.pipelines.augment import AUGMENTED_DIR, extract_augmented_features

        rows += extract_augmented_features(
            coords, Path(out) / AUGMENTED_DIR, encoder, args.encoder, seed=args.augment_seed,
            slides=args.slides, mpp=args.mpp, recursive=args.recursive, checkpoint=args.checkpoint, batch_size=args.batch_size,
            workers=args.workers, accelerator=args.accelerator, devices=devices, precision=args.precision,
            overwrite=args.overwrite, progress=not args.no_progress, num_nodes=args.num_nodes, weights=weights,
            reader=args.reader)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``mgpath extract``. Exit status 0 when every slide is done or cached, 1 when some were skipped."""
    args = build_parser().parse_args(argv)
    from mgpath.pipelines.extract import write_summary
    from mgpath.pipelines.jobs import find_jobs
    from mgpath.pipelines.summary import count_line, format_rows
    from mgpath.slides.reader import check_mpp_override

    try:
        if args.mpp is not None:
            check_mpp_override(args.mpp, "--mpp")
        jobs, problems = find_jobs(args.coords, args.out, args.slides, args.mpp, args.recursive)
        encoder, weights = load_encoder(args, "mgpath extract")
    except (FileNotFoundError, ValueError, OSError) as e:
        return report_error("mgpath extract", e)
    rows = problems + run_extraction(args, jobs, args.coords, args.out, encoder, weights)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(count_line(rows, lambda r: Path(r["out"]).parent.name if r.get("out") else None, "feature files"))

    def details(r):
        out = r.get("out")
        where = f"{Path(out).parent.name}/" if out and Path(out).parent != Path(args.out) else ""
        return f"{where}{r['slide_id']} ({r.get('tiles', '?')} tiles)"

    print("\n".join(format_rows(rows, details)))
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print(f"summary: {write_summary(rows, Path(args.out), rank, world)}")
    except OSError as e:
        print(f"mgpath extract: could not write the summary into {args.out}: {e.strerror or e} (disk full?); "
              "the lines above are the whole summary", file=sys.stderr)
        return 1
    return 0 if all(r["status"] in ("done", "cached") for r in rows) else 1


