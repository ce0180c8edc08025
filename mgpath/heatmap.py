"""Heatmaps of a trained MGPATH over a slide thumbnail (PNG).

Per magnification and tile:

- **attention**: the patch-level attention of the M visual prompts on the tile, averaged over prompts
  (``mean_m softmax_n(P_m . H_n / sqrt(D))``), scaled to [0, 1] for drawing;
- **transport mass of class c**: each visual token ``m`` carries ``sum_s T*_c[m, s] cos_c[m, s]`` (its share of
  the class's OT similarity; with unbalanced OT the mass itself varies too); this is spread back to the tiles
  through the attention weights: ``score_c(n) = sum_m att[m, n] * sum_s T*_c[m, s] cos_c[m, s]``.

``mgpath heatmap --ckpt best.ckpt --slide slides/x.tiff --features-root features --out x.png``
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from mgpath.model import MGPATH, Bag
from vapt.atomic import atomic_path

__all__ = ["draw_heatmaps", "heatmap_scores", "main"]


@torch.no_grad()
def heatmap_scores(model: MGPATH, bags: dict[str, Bag]) -> dict[str, dict[str, np.ndarray]]:
    """Per-tile scores of one slide.

    Returns
    -------
    ``{mag: {"attention": (N,), "transport": (C, N), "probs": (C,)}}``.
    """
    model.eval()
    logits, details = model([bags], return_details=True)
    probs = logits.softmax(-1)[0].cpu().numpy()
    out = {}
    for m in model.magnifications:
        att = details[m]["attention"][0]  # (M, N)
        plan, cost = details[m]["plan"][0], details[m]["cost"][0]  # (C, M, S)
        contrib = (plan * (1 - cost)).sum(-1)  # (C, M)
        out[m] = {"attention": att.mean(0).cpu().numpy(), "transport": (contrib @ att).cpu().numpy(),
                  "probs": probs}
    return out


def _paint(thumb_shape, coords, tile_level0, scale, values):
    """Rasterise per-tile values on the thumbnail grid (NaN outside tiles)."""
    h, w = thumb_shape[:2]
    img = np.full((h, w), np.nan, dtype=np.float32)
    size = max(1, int(np.ceil(tile_level0 * scale)))
    for (x, y), v in zip(np.asarray(coords), values):
        x0, y0 = int(x * scale), int(y * scale)
        img[max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)] = v
    return img


def draw_heatmaps(thumbnail: np.ndarray, slide_dims: tuple[int, int], scores: dict, coords: dict[str, np.ndarray],
                  tile_level0: dict[str, float], classes: list[str], out: str | os.PathLike, title: str = "") -> Path:
    """Draw attention and per-class transport maps over the thumbnail into one PNG (written atomically).

    Rows: magnifications; columns: attention, then one map per class showing the class's transport score
    minus the average over classes (where the tile pulls towards that class), each scaled to [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = thumbnail.shape[1] / float(slide_dims[0])
    mags = list(scores)
    ncol = 1 + len(classes)
    fig, axes = plt.subplots(len(mags), ncol, figsize=(3.2 * ncol, 3.0 * len(mags)), squeeze=False)
    for r, m in enumerate(mags):
        s = scores[m]
        maps = [("attention", s["attention"], "viridis")]
        contrast = s["transport"] - s["transport"].mean(0, keepdims=True)  # class c vs the class average
        maps += [(f"{c} (p={s['probs'][i]:.2f})", contrast[i], "magma") for i, c in enumerate(classes)]
        for col, (name, vals, cmap) in enumerate(maps):
            v = np.asarray(vals, dtype=np.float64)
            lo, hi = np.nanmin(v), np.nanmax(v)
            v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
            ax = axes[r, col]
            ax.imshow(thumbnail)
            ax.imshow(_paint(thumbnail.shape, coords[m], tile_level0[m], scale, v), cmap=cmap, alpha=0.55,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{m} {name}", fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:  # savefig infers the format from the extension
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def _tile_size_level0(path) -> float:
    import h5py

    from mgpath.graph import infer_step

    with h5py.File(path, "r") as f:
        for key in ("patch_size_level0", "step_level0"):
            if key in f.attrs:
                return float(f.attrs[key])
        return float(infer_step(np.asarray(f["coords"][()])))


def slide_heatmap(model: MGPATH, slide_path: str, feature_files: dict[str, str], out: str, mpp: float | None = None,
                  max_size: int = 1024) -> tuple[Path, dict]:
    """Heatmap PNG of one slide from its feature files ``{mag: path}``; returns (png path, scores)."""
    from mgpath.data import load_bag
    from mgpath.slides.reader import Slide

    bags, coords, tiles = {}, {}, {}
    for m in model.magnifications:
        if m not in feature_files:
            raise KeyError(f"mgpath/heatmap.py: no features at {m} for {slide_path}")
        bags[m], c = load_bag(feature_files[m], Path(slide_path).stem, m)
        if c is None:
            raise ValueError(f"mgpath/heatmap.py: {feature_files[m]} has no coords; heatmaps need tile positions")
        coords[m], tiles[m] = c, _tile_size_level0(feature_files[m])
    scores = heatmap_scores(model, bags)
    with Slide(slide_path, mpp=mpp) as s:
        thumb, dims = s.thumbnail(max_size), s.dimensions
    title = f"{Path(slide_path).name}: " + ", ".join(
        f"{c} {p:.2f}" for c, p in zip(model.classes, scores[model.magnifications[0]]["probs"]))
    return draw_heatmaps(thumb, dims, scores, coords, tiles, model.classes, out, title), scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mgpath heatmap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="Lightning checkpoint of MGPATHModule (e.g. the best one of fit)")
    ap.add_argument("--slide", required=True, help="the slide file")
    ap.add_argument("--features-root", default=None, help="folder with <mag>/<slide_id>.h5")
    ap.add_argument("--features", nargs="*", default=None, help="explicit MAG=FILE pairs, e.g. 5x=a.h5 10x=b.h5")
    ap.add_argument("--slide-id", default=None, help="default: the slide file name without extension")
    ap.add_argument("--mpp", type=float, default=None)
    ap.add_argument("--max-size", type=int, default=1024, help="thumbnail longer side (px)")
    ap.add_argument("--out", required=True, help="output PNG")
    a = ap.parse_args(argv)
    from mgpath.io import find_feature_file
    from mgpath.module import MGPATHModule
    from mgpath.slides.reader import slide_id_from_path

    if not Path(a.ckpt).is_file():
        ap.error(f"checkpoint {a.ckpt} does not exist (the best one of `mgpath fit` is under "
                 "<default_root_dir>/checkpoints/)")
    if not Path(a.slide).is_file():
        ap.error(f"slide {a.slide} does not exist")
    try:
        module = MGPATHModule.load_from_checkpoint(a.ckpt, map_location="cpu")
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise ValueError(f"{a.ckpt} is not a readable MGPATH checkpoint ({type(e).__name__}); give a .ckpt "
                         "written by `mgpath fit`") from None
    sid = a.slide_id or slide_id_from_path(a.slide)
    if a.features:
        files = dict(kv.split("=", 1) for kv in a.features)
    elif a.features_root:
        files = {m: str(find_feature_file(Path(a.features_root) / m, sid)) for m in module.model.magnifications}
    else:
        ap.error("give --features-root or --features")
    png, scores = slide_heatmap(module.model, a.slide, files, a.out, a.mpp, a.max_size)
    probs = scores[module.model.magnifications[0]]["probs"]
    print(f"wrote {png}; " + ", ".join(f"p({c})={p:.3f}" for c, p in zip(module.model.classes, probs)))
    return 0
