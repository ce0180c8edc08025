#!/usr/bin/env python3
"""Benchmark: segmentation + tiling seconds per slide, and feature-extraction throughput vs the encoder alone.

    python3 scripts/bench/tiling.py [--size 50000] [--device cpu|cuda] [--max-tiles 256] [--encoder vit_small_patch16_224]

Generates a ``size x size`` pyramidal JPEG TIFF slide once (cached under ~/.cache/vapt-mgpath/bench), then
1. times ``tile_slide`` (read the segmentation level, segment, grid, tissue fractions, write h5 + GeoJSON +
   preview) at ``--magnification`` (median of ``--repeats``);
2. encodes the first ``--max-tiles`` tiles twice: through ``extract_features`` (DataLoader workers reading
   the slide + Lightning predict; bf16 on GPU) and with the encoder alone on the same pre-made tensors.
Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vapt-mgpath" / "bench"))
    p.add_argument("--magnification", type=float, default=10)
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoder", default="vit_small_patch16_224")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-tiles", type=int, default=128, help="tiles encoded (keep small on CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--extract-magnification",
        type=float,
        default=None,
        help="magnification of the tiles encoded (default: --magnification)",
    )
    p.add_argument("--skip-extract", action="store_true")
    args = p.parse_args(argv)

    import torch

    from mgpath.io import read_coords
    from mgpath.pipelines.tile import tile_slide
    from mgpath.slides import Slide
    from mgpath.slides.grid import TileParams
    from mgpath.slides.synthetic import make_synthetic_slide

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    slide_path = cache / f"bench_{args.size}_{args.mpp:g}.tiff"
    gen_s = None
    if not slide_path.exists():
        levels = 1
        while args.size / 4**levels >= 512:
            levels += 1
        t = time.perf_counter()
        make_synthetic_slide(
            slide_path,
            size=(args.size, args.size),
            mpp=args.mpp,
            levels=levels,
            downsample=4,
            tissue_class=0,
            compression="jpeg",
            tile=256,
        )
        gen_s = time.perf_counter() - t
    with Slide(slide_path) as s:
        dims, levels = s.dimensions, s.level_count
    result = {
        "bench": "mgpath_tiling",
        "slide_px": list(dims),
        "levels": levels,
        "mpp": args.mpp,
        "slide_mb": round(slide_path.stat().st_size / 2**20, 1),
        "generate_s": None if gen_s is None else round(gen_s, 1),
        "magnification": args.magnification,
        "tile_size": args.tile_size,
        "cpus": os.cpu_count(),
    }

    tp = TileParams(tile_size=args.tile_size, magnification=args.magnification)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t = time.perf_counter()
            row = tile_slide(slide_path, tmp, tp, overwrite=True)
            times.append(time.perf_counter() - t)
            if row["status"] != "done":
                raise SystemExit(f"tiling failed: {row}")
        result["tiling_s_per_slide"] = round(statistics.median(times), 3)
        result["tiling_s_all"] = [round(t, 3) for t in times]
        result["tiles"] = row[f"tiles_{tp.tag}"]
        coords_file = Path(tmp) / tp.tag / "coords" / f"{slide_path.stem}.h5"

        if not args.skip_extract:
            import lightning.pytorch as pl

            from mgpath.pipelines.extract import extract_features
            from mgpath.pipelines.jobs import SlideJob
            from mgpath.pipelines.tile_dataset import TileDataset
            from vapt.backbones import build_backbone

            if args.extract_magnification and args.extract_magnification != args.magnification:
                tpe = TileParams(tile_size=args.tile_size, magnification=args.extract_magnification)
                tile_slide(slide_path, tmp, tpe, overwrite=True)
                coords_file = Path(tmp) / tpe.tag / "coords" / f"{slide_path.stem}.h5"
            xy, attrs = read_coords(coords_file)
            result["extract_magnification"] = attrs["target_magnification"]
            result["extract_unique_tiles"] = int(min(len(xy), args.max_tiles))
            xy = np.resize(xy, (args.max_tiles, 2)) if args.max_tiles > len(xy) else xy[: args.max_tiles]
            enc = build_backbone(args.encoder, img_size=224)
            cfg = enc.data_config
            out = Path(tmp) / "feats" / f"{slide_path.stem}.h5"
            job = SlideJob(slide_path.stem, str(slide_path), str(coords_file), str(out), xy, attrs)
            dev = torch.device(args.device)
            accel = "gpu" if args.device == "cuda" else "cpu"
            if args.device == "cuda":  # warm-up run (CUDA context, kernels), then the timed run
                extract_features(
                    [job],
                    enc,
                    args.encoder,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    accelerator=accel,
                    devices=1,
                    overwrite=True,
                    progress=False,
                )
            class BatchTimer(pl.Callback):  # (time, tiles) per predicted batch
                times: list = []

                def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
                    self.times.append((time.perf_counter(), len(batch[1])))

            timer = BatchTimer()
            t = time.perf_counter()
            rows = extract_features(
                [job],
                enc,
                args.encoder,
                batch_size=args.batch_size,
                workers=args.workers,
                accelerator=accel,
                devices=1,
                overwrite=True,
                progress=False,
                callbacks=[timer],
            )
            extract_s = time.perf_counter() - t
            assert rows[0]["status"] == "done", rows
            bt = timer.times
            steady = (sum(n for _, n in bt[1:]) / (bt[-1][0] - bt[0][0])) if len(bt) > 2 else None
            # the same tensors, encoder alone
            ds = TileDataset([job], tuple(cfg["input_size"][-2:]), cfg["mean"], cfg["std"])
            n1 = min(len(ds), 128)
            t = time.perf_counter()
            for i in range(n1):
                ds[i]
            read_s = (time.perf_counter() - t) * len(ds) / n1  # one process, extrapolated
            loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=args.workers)
            x = torch.cat([b[0] for b in loader])
            enc = enc.to(dev).eval()
            amp = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if args.device == "cuda"
                else torch.autocast("cpu", enabled=False)
            )

            def run():
                with torch.inference_mode(), amp:
                    for i in range(0, len(x), args.batch_size):
                        enc(x[i : i + args.batch_size].to(dev, non_blocking=True))
                if args.device == "cuda":
                    torch.cuda.synchronize()

            run() if args.device == "cuda" else None
            t = time.perf_counter()
            run()
            enc_s = time.perf_counter() - t
            n = len(xy)
            result.update(
                {
                    "encoder": args.encoder,
                    "device": args.device,
                    "torch_threads": torch.get_num_threads(),
                    "extract_tiles": n,
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                    "extract_tiles_per_s": round(n / extract_s, 2),
                    "extract_steady_tiles_per_s": None if steady is None else round(steady, 2),
                    "encoder_alone_tiles_per_s": round(n / enc_s, 2),
                    "read_transform_tiles_per_s_1proc": round(n / read_s, 2),
                    "extract_vs_encoder": round(enc_s / extract_s, 3),
                    "extract_steady_vs_encoder": None if steady is None else round(steady * enc_s / n, 3),
                }
            )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
