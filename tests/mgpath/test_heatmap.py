"""Heatmaps: tile values on the thumbnail grid, colour bars, tissue clipping, and the folder mode."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch

from mgpath.heatmap import heatmap_figure, heatmap_folder, heatmap_scores, tile_value_map

DESC = {"5x": {"A": "dark nuclei", "B": "pale glands"}, "10x": {"A": "dark cells", "B": "pale cells"}}


def test_tile_value_map_blocks_every_tile_and_smooth_constant():
    coords = np.array([[0, 0], [100, 0], [0, 100], [1000, 1000]])
    vals = np.array([1.0, 2.0, 3.0, 4.0])
    m = tile_value_map((60, 60), coords, 100.0, 0.05, vals, smooth=0)  # tiles are 5 px wide
    assert m[2, 2] == 1 and m[2, 7] == 2 and m[7, 2] == 3 and m[50, 50] == 4
    assert np.isnan(m[7, 7]) and np.isnan(m[30, 30])
    # a tile smaller than a pixel still gets one
    tiny = tile_value_map((60, 60), np.array([[333, 444]]), 3.0, 0.05, np.array([7.0]), smooth=0.5)
    assert np.nansum(tiny == 7.0) >= 1
    # smoothing keeps equal values exact and stays within the range of the values
    flat = tile_value_map((60, 60), coords[:3], 100.0, 0.05, np.full(3, 0.25), smooth=0.5)
    assert np.allclose(flat[np.isfinite(flat)], 0.25)
    sm = tile_value_map((60, 60), coords, 100.0, 0.05, vals, smooth=0.5)
    assert np.nanmin(sm) >= 1 - 1e-6 and np.nanmax(sm) <= 4 + 1e-6
    assert np.isfinite(sm[coords[:, 1] // 20 + 2, coords[:, 0] // 20 + 2]).all()


def _model_and_bags():
    from mgpath.graph import tile_adjacency
    from mgpath.model import Bag, build_mgpath

    torch.manual_seed(0)
    model = build_mgpath(DESC, ["A", "B"], 12, embed_dim=16, text_model="mgpath-tiny", n_ctx=4, n_sets=2,
                         n_prompts=8)
    xy = {"5x": np.stack(np.meshgrid(np.arange(3), np.arange(3)), -1).reshape(-1, 2) * 512 + 512,
          "10x": np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2) * 256 + 512}
    feats = {m: torch.randn(len(c), 12) for m, c in xy.items()}
    bags = {m: Bag(feats[m], torch.from_numpy(tile_adjacency(c, 512 if m == "5x" else 256))) for m, c in xy.items()}
    return model, xy, feats, bags


def test_figure_has_colour_bars_and_clips_to_tissue():
    import matplotlib.pyplot as plt

    model, xy, _, bags = _model_and_bags()
    scores = heatmap_scores(model, bags)
    thumb = np.full((96, 128, 3), 255, np.uint8)
    tissue = np.zeros((96, 128), bool)
    tissue[30:70, 30:90] = True
    fig = heatmap_figure(thumb, (3072, 2304), scores, xy, {"5x": 512, "10x": 256}, ["A", "B"], "t", tissue)
    try:
        panels = [ax for ax in fig.axes if ax.images]
        bars = [ax for ax in fig.axes if not ax.images]
        assert len(panels) == 2 * 3 and len(bars) == len(panels)  # one colour bar per panel
        labels = {ax.get_ylabel() for ax in bars}
        assert "attention weight" in labels and "transport to A - class mean" in labels
        overlay = panels[0].images[1].get_array()
        assert overlay.shape == (96, 128, 4)
        alpha = np.asarray(overlay[..., 3])
        assert (alpha[~tissue] == 0).all() and (alpha[40:60, 40:80] > 0).all()
    finally:
        plt.close(fig)


def test_heatmap_folder_one_png_per_slide_and_index(synthetic, tmp_path):
    from mgpath.slides.reader import slide_id_from_path

    model, xy, feats, _ = _model_and_bags()
    slides = [synthetic("ha.tiff", size=(3072, 2304), mpp=0.5, levels=3),
              synthetic("hb.tiff", size=(3072, 2304), mpp=0.5, levels=3, tissue_class=1)]
    root = tmp_path / "features"
    sid = slide_id_from_path(slides[0].path)
    for m, c in xy.items():
        (root / m).mkdir(parents=True)
        with h5py.File(root / m / f"{sid}.h5", "w") as f:
            f["features"] = feats[m].numpy()
            f["coords"] = c.astype(np.int64)
            f.attrs["patch_size_level0"] = 512 if m == "5x" else 256
    out = tmp_path / "maps"
    rows = heatmap_folder(model, [str(s.path) for s in slides], str(root), out, max_size=256, log=lambda *a: None)
    assert [r["status"] for r in rows] == ["done", "skipped"]
    assert "no features for slide 'hb'" in rows[1]["reason"]
    assert (out / "ha.png").stat().st_size > 1000 and not (out / "hb.png").exists()
    page = (out / "index.html").read_text()
    assert 'href="ha.png"' in page and "hb" in page
    table = list(csv.DictReader((out / "index.csv").open()))
    assert [r["slide_id"] for r in table] == ["ha", "hb"]
    assert float(table[0]["p_A"]) + float(table[0]["p_B"]) == pytest.approx(1, abs=1e-3)
    assert (out / "index.png").is_file()
