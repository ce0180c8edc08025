#!/usr/bin/env python3
"""Benchmark: tiles/s per CPU core delivered as normalised (3, 224, 224) float tensors from a JPEG pyramid.

    python3 scripts/bench/read_throughput.py [--size 24576] [--tiles 600] [--rounds 5] [--clam-dir DIR]
        [--trident-dir DIR] [--peer-path DIR]

Generates (once, cached under ~/.cache/vapt-mgpath/bench) a ``size x size`` 0.25 um/px (40x) JPEG-tiled
pyramidal TIFF with known tissue (levels 1, 1/4, 1/16 like an Aperio svs, 256-px tiles), takes the tissue
tiles of the 20x (0.5 um/px, 448 level-0 px) and 10x (1.0 um/px, 896 level-0 px) grids at 224 px, and times
in one process with one thread, interleaved round by round on the same tiles:

- ``default``: ``Slide(path).read_footprint``, the default reader (the JPEG fast path,
  :mod:`mgpath.slides.jpeg_tiles`, on this file), tiles in slide-tile order, then /255 and mean/std
  normalisation to a CHW float tensor;
- ``openslide``: ``Slide(path, fast=False).read_footprint`` (OpenSlide read of the best level + antialiased
  bilinear resize), the reference the default reader's pixel bounds are measured against;
- ``fast_margin1``: the fast path with ``dct_margin=1`` (a 1/2 target decoded at full scale and resized:
  pixels identical to ``openslide``);
- ``decode_only``: every stored JPEG tile those patches need, read and decoded once at the scale the fast
  path uses, nothing else (the limit of any CPU reader of this file);
- ``clam`` (with ``--clam-dir``): CLAM's ``Whole_Slide_Bag_FP`` from its own code (OpenSlide read at the
  patch level, torchvision Resize(224) + ToTensor + Normalize);
- ``trident`` (with ``--trident-dir``, needs geopandas): TRIDENT's ``WSIPatcher`` from its own code on the
  same coordinates (OpenSlide read of the best level, cv2 resize) + ToTensor + Normalize;
- ``wsidata`` (when ``wsidata``, LazySlide's reader package, imports; ``--peer-path`` folders are put on
  ``sys.path``): its ``OpenSlideReader.get_region`` at the level LazySlide's ``shapes2tiles`` picks, resized to
  224 by its ``TileRequest.resize`` (cv2 area averaging), + ToTensor + Normalize, as its tile dataset reads.

Prints ONE JSON line: tiles/s per core for each reader and magnification (median over rounds, and the best
round, the least disturbed on a shared machine), and the medians over rounds of the per-round ratios
``default_over_<reader>``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_slide(cache: Path, size: int) -> tuple[Path, object]:
    from mgpath.slides.synthetic import default_regions, make_synthetic_slide

    path = cache / f"read_{size}_0.25.tiff"
    regions = default_regions(size, size, "three")
    if not path.exists():
        make_synthetic_slide(path, size=(size, size), mpp=0.25, levels=3, downsample=4, tissue_class=0,
                             compression="jpeg", tile=256, regions=regions)
    return path, regions


def tissue_tiles(regions, size: int, size0: int, n: int) -> np.ndarray:
    """Up to ``n`` grid tiles (row-major) whose centre is tissue: ``(n, 2)`` level-0 corners."""
    from mgpath.slides.synthetic import tissue_mask

    xs = np.arange(0, size - size0 + 1, size0)
    gy, gx = np.meshgrid(xs, xs, indexing="ij")
    c = np.stack([gx.ravel(), gy.ravel()], 1)
    keep = tissue_mask(regions, c[:, 0] + size0 / 2, c[:, 1] + size0 / 2)
    c = c[keep]
    if len(c) > n:  # a contiguous block of rows, as a slide's tiles are read
        start = (len(c) - n) // 2
        c = c[start : start + n]
    return c


def to_tensor(tile: np.ndarray, scale, shift):
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 ``(x / 255 - mean) / std`` (one converting copy, then in place)."""
    import torch

    x = torch.empty((3, *tile.shape[:2]), dtype=torch.float32)
    x.copy_(torch.from_numpy(tile).permute(2, 0, 1))
    return x.mul_(scale).sub_(shift)


def time_reader(slide, coords, size0, out, scale, shift) -> float:
    t = time.perf_counter()
    for xy in coords:
        to_tensor(slide.read_footprint(xy, size0, out), scale, shift)
    return len(coords) / (time.perf_counter() - t)


def time_decode_only(path, coords, size0, out, margin: int = 0) -> tuple[float, int]:
    from mgpath.slides import Slide

    with Slide(path, fast=True) as s:
        s._jpeg.dct_margin = margin
        keys = []
        seen = set()
        for xy in coords:
            for key in s._jpeg.tiles_needed(xy, size0, out):
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
        jt = s._jpeg
        t = time.perf_counter()
        for level, k, tx, ty in keys:
            jt.decode(jt.tile_bytes(level, tx, ty), level, k)
        return len(coords) / (time.perf_counter() - t), len(keys)


def time_clam(clam_dir: str, path, coords, size0, tmp: Path) -> float:
    """CLAM's own Whole_Slide_Bag_FP over the same coordinates (level 0, patch_size = footprint)."""
    import h5py
    import openslide
    from torchvision import transforms

    sys.path.insert(0, clam_dir)
    from dataset_modules.dataset_h5 import Whole_Slide_Bag_FP

    h5 = tmp / f"clam_{size0}.h5"
    with h5py.File(h5, "w") as f:
        d = f.create_dataset("coords", data=np.asarray(coords, np.int64))
        d.attrs["patch_level"], d.attrs["patch_size"] = 0, int(size0)
    tf = transforms.Compose([transforms.Resize(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    with contextlib.redirect_stdout(io.StringIO()):
        ds = Whole_Slide_Bag_FP(str(h5), openslide.OpenSlide(str(path)), img_transforms=tf)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - t)


def time_trident(trident_dir: str, path, coords, size0) -> float:
    """TRIDENT's own WSIPatcher (OpenSlideWSI, custom coordinates, 0.25 -> target um/px, numpy tiles resized
    by its cv2 call) + torchvision ToTensor/Normalize, as its patch-feature loader does."""
    from torchvision import transforms

    sys.path.insert(0, trident_dir)
    from trident import OpenSlideWSI

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        wsi = OpenSlideWSI(slide_path=str(path), lazy_init=False, mpp=0.25)
        patcher = wsi.create_patcher(patch_size=224, src_pixel_size=0.25, dst_pixel_size=0.25 * size0 / 224,
                                     custom_coords=np.asarray(coords, np.int64))
    t = time.perf_counter()
    for tile, _, _ in patcher:
        tf(tile)
    n = len(patcher)
    return n / (time.perf_counter() - t)


def time_wsidata(path, coords, size0) -> float:
    """wsidata's (LazySlide's) OpenSlide reader and tile request, as its ``TileImagesDataset`` reads a tile:
    the deepest level whose downsample x 224 fits the footprint, ``get_region`` there, ``TileRequest.resize``
    (cv2 area averaging) to 224, + torchvision ToTensor/Normalize."""
    from torchvision import transforms
    from wsidata._model.tile import TileRequest
    from wsidata.reader import OpenSlideReader

    reader = OpenSlideReader(str(path))
    ds = np.asarray(reader.reader.level_downsamples, np.float64)
    level = int(np.clip(np.searchsorted(ds * 224, size0, side="right") - 1, 0, len(ds) - 1))
    ops = int(round(size0 / ds[level]))
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    reqs = [TileRequest(int(x), int(y), level, ops, ops, None if ops == 224 else (224, 224)) for x, y in coords]
    t = time.perf_counter()
    for r in reqs:
        tf(r.resize(reader.get_region(r.x, r.y, r.width, r.height, level=r.level)))
    return len(reqs) / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=24576)
    p.add_argument("--tiles", type=int, default=600, help="tiles per magnification and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vapt-mgpath" / "bench"))
    p.add_argument("--clam-dir", default=None, help="a checkout of mahmoodlab/CLAM to time its loader")
    p.add_argument("--trident-dir", default=None, help="a checkout of mahmoodlab/TRIDENT (needs geopandas)")
    p.add_argument("--peer-path", nargs="*", default=[], help="folders put on sys.path for the peers' packages")
    args = p.parse_args(argv)

    import tempfile

    import torch

    from mgpath.slides import Slide
    from mgpath.slides.jpeg_tiles import tile_order

    sys.path.extend(args.peer_path)
    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path, regions = make_slide(cache, args.size)
    scale = torch.tensor([1 / 255.0 / s for s in STD]).view(3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(MEAN, STD)]).view(3, 1, 1)
    out = 224
    result = {"bench": "mgpath_read_throughput", "slide_px": [args.size] * 2, "mpp": 0.25,
              "tile_px": out, "threads": 1, "rounds": args.rounds}
    peers = {}
    if args.clam_dir:
        peers["clam"] = lambda c, s0: time_clam(args.clam_dir, path, c, s0, tmp)
    if args.trident_dir:
        peers["trident"] = lambda c, s0: time_trident(args.trident_dir, path, c, s0)
    try:
        import wsidata  # noqa: F401

        peers["wsidata"] = lambda c, s0: time_wsidata(path, c, s0)
    except ImportError as e:
        result["missing"] = {"wsidata": str(e)}
    tmp = Path(tempfile.mkdtemp(prefix="read_bench_"))
    for mag, size0 in (("20x", 448), ("10x", 896)):
        coords = tissue_tiles(regions, args.size, size0, args.tiles)
        coords = coords[tile_order(coords, 256)]
        runs: dict[str, list[float]] = {k: [] for k in ("default", "openslide", "fast_margin1", "decode_only", *peers)}
        for r in range(args.rounds):  # fresh readers each round: nothing cached across rounds
            with Slide(path) as s:
                assert s.fast, s.fast_reason
                runs["default"].append(time_reader(s, coords, size0, out, scale, shift))
                decoded = s._jpeg.decoded
                plan = s._jpeg.plan((size0, size0), (out, out))
            with Slide(path, fast=False) as s:
                runs["openslide"].append(time_reader(s, coords, size0, out, scale, shift))
            with Slide(path, dct_margin=1) as s:  # the closest-to-OpenSlide setting of the fast path
                runs["fast_margin1"].append(time_reader(s, coords, size0, out, scale, shift))
            d, needed = time_decode_only(path, coords, size0, out)
            runs["decode_only"].append(d)
            for name, fn in peers.items():
                runs[name].append(fn(coords, size0))
        med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
        best = {k: round(max(v), 1) for k, v in runs.items()}  # least disturbed round of a shared machine
        result[mag] = {
            "tiles": len(coords),
            "footprint_level0": size0,
            "plan_level_dct_scale": list(plan),
            "jpeg_tiles_needed": needed,
            "jpeg_tiles_decoded_by_default": decoded,
            "tiles_per_s_per_core": med,
            "tiles_per_s_per_core_best": best,
            **{f"default_over_{k}": round(statistics.median([a / b for a, b in zip(runs["default"], runs[k])]), 2)
               for k in runs if k != "default"},
        }
    result["default_ge_peers"] = {
        m: all(result[m][f"default_over_{k}"] >= 1 for k in peers) if peers else None for m in ("20x", "10x")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
