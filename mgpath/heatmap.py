"""Heatmaps of a trained MGPATH over a slide thumbnail (PNG).

Per magnification and tile:

- **attention**: the patch-level attention of the M visual prompts on the tile, averaged over prompts
  (``mean_m softmax_n(P_m . H_n / sqrt(D))``; it sums to 1 over the slide's tiles);
- **transport mass of class c**: each visual token ``m`` carries ``sum_s T*_c[m, s] cos_c[m, s]`` (its share of
  the class's OT similarity; with unbalanced OT the mass itself varies too); this is spread back to the tiles
  through the attention weights: ``score_c(n) = sum_m att[m, n] * sum_s T*_c[m, s] cos_c[m, s]``.

``mgpath heatmap --ckpt_path best.ckpt --slide slides/x.tiff --features_root features --out x.png``
``mgpath heatmap --ckpt_path best.ckpt --slides slides/ --features_root features --out heatmaps/`` (one page
(PNG) per slide, plus ``index.html``, ``index.png`` and ``index.csv``). Drawing: :mod:`mgpath.heatmap_draw`.
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from mgpath.heatmap_draw import (
    DPI,
    colour_key,
    heatmap_figure,
    overview_image,
    panel_values,
    tile_value_map,
)
from mgpath.model import MGPATH, Bag
from vapt.fileio.atomic import atomic_path, write_text_atomic

__all__ = ["draw_heatmaps", "heatmap_figure", "heatmap_folder", "heatmap_scores", "run", "slide_heatmap",
           "tile_value_map"]


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


def tissue_on_thumbnail(slide, shape: tuple[int, int]) -> np.ndarray:
    """The slide's tissue mask ``(h, w)`` bool on a thumbnail grid (segmentation of :mod:`mgpath.slides.tissue`)."""
    from mgpath.slides.tissue import rasterize, segment_tissue

    t = segment_tissue(slide)
    w0, h0 = slide.dimensions
    return rasterize(t.polygons, shape[:2], (w0 / shape[1], h0 / shape[0]))


def draw_heatmaps(thumbnail: np.ndarray, slide_dims: tuple[int, int], scores: dict, coords: dict[str, np.ndarray],
                  tile_level0: dict[str, float], classes: list[str], out: str | os.PathLike, title: str = "",
                  tissue_mask: np.ndarray | None = None, smooth: float = 0.5, colouring: str = "value") -> Path:
    """Draw the page of one slide (:func:`mgpath.heatmap_draw.heatmap_figure`) into one PNG, written atomically.

    Rows: magnifications; columns: attention (mean over the visual prompts, per tile), then per class the
    tile's transport score for the class minus its mean over classes (positive: the tile supports the class;
    diverging colours with 0 in the middle). Each panel blends the map over the slide, only on tissue when
    ``tissue_mask`` (thumbnail-sized bool) is given, with a colour bar spanning the real range of the values
    (``colouring="rank"``: percentile ranks, said on the bar).
    """
    import matplotlib.pyplot as plt

    fig = heatmap_figure(thumbnail, slide_dims, scores, coords, tile_level0, classes, title, tissue_mask, smooth,
                         colouring)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:  # savefig infers the format from the extension
        fig.savefig(tmp, dpi=DPI)
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


def _finest(mags) -> str:
    return max(mags, key=lambda m: float(str(m).rstrip("x") or 0))


def slide_heatmap(model: MGPATH, slide_path: str, feature_files: dict[str, str], out: str, mpp: float | None = None,
                  max_size: int = 1024, clip_to_tissue: bool = True, colouring: str = "value",
                  overview: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Heatmap PNG of one slide from its feature files ``{mag: path}``; returns (png path, scores).

    With ``clip_to_tissue`` the maps are drawn only on the slide's tissue (segmented again at the default
    settings), so large low-magnification tiles do not colour the glass around the tissue. ``overview``: also
    write a small PNG there (the finest magnification's attention as percentile ranks) for an index.
    """
    from mgpath.data import load_bag
    from mgpath.slides.preview import encode_png
    from mgpath.slides.reader import Slide
    from vapt.fileio.atomic import write_bytes_atomic

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
        tissue = tissue_on_thumbnail(s, thumb.shape) if clip_to_tissue and s.has_mpp else None
    probs = scores[model.magnifications[0]]["probs"]
    title = f"{Path(slide_path).name}: predicted " + ", ".join(
        f"{c} {p:.2f}" for c, p in sorted(zip(model.classes, probs), key=lambda t: -t[1]))
    png = draw_heatmaps(thumb, dims, scores, coords, tiles, model.classes, out, title, tissue, colouring=colouring)
    if overview is not None:
        m = _finest(model.magnifications)
        ranks = panel_values(scores[m]["attention"], "rank")[0] / 100
        vmap = tile_value_map(thumb.shape, coords[m], tiles[m], thumb.shape[1] / float(dims[0]), ranks)
        Path(overview).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(overview, encode_png(overview_image(thumb, vmap, tissue)))
    return png, scores


def heatmap_folder(model: MGPATH, slides: list[str], features_root: str, out_dir: str | os.PathLike,
                   mpp: float | None = None, max_size: int = 1024, log=print, colouring: str = "value") -> list[dict]:
    """One heatmap page (PNG) per slide in ``out_dir`` plus an index: ``index.html`` (each slide's overview,
    linking to its page), ``index.png`` (the overviews in a grid, with the index's own title and legend) and
    ``index.csv`` (slide, status, reason, class probabilities). Overviews go to ``out_dir/overview/``.

    A slide without feature files, or one that cannot be read, is listed with its reason and the others go on.
    """
    import csv
    import io

    from mgpath.io import find_feature_file
    from mgpath.slides.preview import write_contact_sheet
    from mgpath.slides.reader import SlideError, slide_id_from_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in slides:
        sid = slide_id_from_path(path)
        row = {"slide_id": sid, "slide": path, "png": "", "status": "done", "reason": ""}
        try:
            files = {m: str(find_feature_file(Path(features_root) / m, sid)) for m in model.magnifications}
            png, scores = slide_heatmap(model, path, files, str(out_dir / f"{sid}.png"), mpp, max_size,
                                        colouring=colouring, overview=out_dir / "overview" / f"{sid}.png")
            probs = scores[model.magnifications[0]]["probs"]
            row.update(png=str(png), thumb=str(out_dir / "overview" / f"{sid}.png"),
                       **{f"p_{c}": round(float(p), 4) for c, p in zip(model.classes, probs)})
        except (FileNotFoundError, KeyError, ValueError, SlideError, OSError) as e:
            row.update(status="skipped", reason=str(e).splitlines()[0][:300])
        log(f"{sid}: {row['status']}{' (' + row['reason'] + ')' if row['reason'] else ''}")
        rows.append(row)
    items = [{"slide_id": r["slide_id"], "png": r["png"] or None, "thumb": r.get("thumb"),
              "caption": r["reason"] or _prediction(r)} for r in rows]
    finest = _finest(model.magnifications)
    write_contact_sheet(items, out_dir, name="index", cell=480, columns=4, title="MGPATH heatmaps",
                        legend=f"Each slide with its attention at {finest} (yellow: the slide's most attended "
                               "tiles, as percentile ranks; dark: least) and the predicted class. Each slide's "
                               "page (its PNG) shows every magnification and class with real value ranges.",
                        key=colour_key("least attended tiles of the slide", "most attended"))
    fields = ["slide_id", "status", "reason", "png", "slide"] + [f"p_{c}" for c in model.classes]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out_dir / "index.csv", buf.getvalue())
    return rows


def _prediction(row: dict) -> str:
    probs = {k[2:]: v for k, v in row.items() if k.startswith("p_")}
    best = max(probs, key=probs.get) if probs else ""
    return f"predicted {best} {probs[best]:.2f}" if probs else ""


def run(a: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    """``mgpath heatmap`` after parsing (`mgpath.commands.heatmap`); ``ap.error`` reports usage errors."""
    from mgpath.io import find_feature_file
    from mgpath.module import MGPATHModule
    from mgpath.slides.reader import slide_id_from_path

    if not Path(a.ckpt_path).is_file():
        ap.error(f"checkpoint {a.ckpt_path} does not exist (the best one of `mgpath fit` is under "
                 "<default_root_dir>/checkpoints/)")
    if not Path(a.slide).exists():
        ap.error(f"slide {a.slide} does not exist")
    try:
        module = MGPATHModule.load_from_checkpoint(a.ckpt_path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise ValueError(f"{a.ckpt_path} is not a readable MGPATH checkpoint ({type(e).__name__}); give a .ckpt "
                         "written by `mgpath fit`") from None
    if Path(a.slide).is_dir():
        from mgpath.pipelines.discovery import find_slides

        if not a.features_root:
            ap.error("a folder of slides needs --features-root (the features of each slide are found by its id)")
        slides, _ = find_slides([a.slide], a.recursive)
        if not slides:
            ap.error(f"no slide files in {a.slide}")
        rows = heatmap_folder(module.model, slides, a.features_root, a.out, a.mpp, a.max_size, colouring=a.colouring)
        done = sum(r["status"] == "done" for r in rows)
        print(f"wrote {done} heatmaps of {len(rows)} slides and {Path(a.out) / 'index.html'}")
        return 0 if done else 1
    sid = a.slide_id or slide_id_from_path(a.slide)
    if a.features:
        files = dict(kv.split("=", 1) for kv in a.features)
    elif a.features_root:
        files = {m: str(find_feature_file(Path(a.features_root) / m, sid)) for m in module.model.magnifications}
    else:
        ap.error("give --features-root or --features")
    png, scores = slide_heatmap(module.model, a.slide, files, a.out, a.mpp, a.max_size, colouring=a.colouring)
    probs = scores[module.model.magnifications[0]]["probs"]
    print(f"wrote {png}; " + ", ".join(f"p({c})={p:.3f}" for c, p in zip(module.model.classes, probs)))
    return 0
