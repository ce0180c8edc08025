#!/usr/bin/env python3
"""Write demo whole-slide images (pyramidal tiled TIFF, correct MPP) with known tissue, for docs and demos.

    python3 scripts/make_demo_slide.py OUT_DIR --per-class 3 --classes 0 1 --size 8192 6144 --mpp 0.5

Writes ``OUT_DIR/<class name>_<i>.tiff``, the ground truth ``OUT_DIR/<class name>_<i>.truth.geojson`` and
``OUT_DIR/labels.csv`` (``slide_id,label``). The generator itself is ``mgpath.slides.synthetic``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from mgpath.slides.synthetic import TISSUE_CLASSES, make_synthetic_slide
from mgpath.slides.tissue import TissuePolygon, write_geojson


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[0, 1],
        help=f"tissue classes: {', '.join(f'{i}={n}' for i, n in enumerate(TISSUE_CLASSES))}",
    )
    p.add_argument("--per-class", type=int, default=2, help="slides per class")
    p.add_argument("--size", type=int, nargs=2, default=[8192, 6144], metavar=("W", "H"))
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 um/px written to the file")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--downsample", type=float, default=2.0)
    p.add_argument("--compression", default="zlib", choices=["zlib", "jpeg", "none"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in args.classes:
        for i in range(args.per_class):
            name = f"{TISSUE_CLASSES[c]}_{i}"
            syn = make_synthetic_slide(
                out / f"{name}.tiff",
                size=tuple(args.size),
                mpp=args.mpp,
                levels=args.levels,
                downsample=args.downsample,
                tissue_class=c,
                compression=None if args.compression == "none" else args.compression,
                seed=args.seed + 1000 * c + i,
            )
            polys = [TissuePolygon(d["exterior"][:-1], [h[:-1] for h in d["holes"]]) for d in syn.polygons()]
            write_geojson(polys, out / f"{name}.truth.geojson", name)
            rows.append({"slide_id": name, "label": TISSUE_CLASSES[c]})
            print(f"wrote {syn.path} {syn.dimensions} mpp={args.mpp} levels={syn.level_dimensions}")
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "label"])
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
