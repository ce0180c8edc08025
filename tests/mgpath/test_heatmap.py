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


@pytest.fixture(scope="module")
def page():
    """The page of one slide (untrained tiny model): figure, scores, tissue mask; closed after the module."""
    import matplotlib.pyplot as plt

    model, xy, _, bags = _model_and_bags()
    scores = heatmap_scores(model, bags)
    thumb = np.full((96, 128, 3), 255, np.uint8)
    tissue = np.zeros((96, 128), bool)
    tissue[30:70, 30:90] = True
    fig = heatmap_figure(thumb, (3072, 2304), scores, xy, {"5x": 512, "10x": 256}, ["A", "B"], "t", tissue)
    yield fig, scores, tissue
    plt.close(fig)


def _panels_and_bars(fig):
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    return panels, bars


def test_page_panels_are_large_with_translucent_overlay_on_tissue(page):
    fig, _, tissue = page
    panels, bars = _panels_and_bars(fig)
    assert len(panels) == 2 * 3 and len(bars) == len(panels)  # one colour bar per panel
    for ax in panels:
        box = ax.get_window_extent()
        assert max(box.width, box.height) >= 1023  # >= 1024 px on the long side in the saved PNG
    overlay = np.asarray(panels[0].images[1].get_array())
    assert overlay.shape == (96, 128, 4)
    alpha = overlay[..., 3]
    assert (alpha[~tissue] == 0).all() and np.allclose(alpha[40:60, 40:80], 0.45)  # tissue shows through


def test_colour_bars_span_the_real_values_in_plain_numbers(page):
    fig, scores, _ = page
    _, bars = _panels_and_bars(fig)
    expected = []
    for m in ("5x", "10x"):
        s = scores[m]
        contrast = s["transport"] - s["transport"].mean(0, keepdims=True)
        expected += [s["attention"], contrast[0], contrast[1]]
    for cax, vals in zip(bars, expected):
        lo, hi = cax.get_ylim()
        assert lo == pytest.approx(float(vals.min()), rel=1e-6, abs=1e-12)
        assert hi == pytest.approx(float(vals.max()), rel=1e-6, abs=1e-12)
        fmt = cax.yaxis.get_major_formatter()
        assert fmt.get_offset() == ""  # no stray "1e-3" over the bar
        ticks = [fmt(t, i) for i, t in enumerate(cax.get_yticks())]
        assert ticks and all("e" not in t and "\u00d7" not in t for t in ticks)


def test_labels_are_plain_language(page):
    fig, _, _ = page
    panels, bars = _panels_and_bars(fig)
    labels = [ax.get_ylabel() for ax in bars]
    assert labels[0].startswith("attention per tile (share of the slide's total")
    assert labels[1] == "supports A (+) or the other class (-)"
    assert labels[2] == "supports B (+) or the other class (-)"
    assert not any("transport" in lab or "class mean" in lab for lab in labels)
    titles = [ax.get_title(loc="left") for ax in panels]
    assert titles[0] == "5x: where the model looks" and titles[1].startswith("5x: evidence for A (slide p = ")


def test_rank_colouring_says_so_on_the_bar():
    import matplotlib.pyplot as plt

    from mgpath.heatmap_draw import panel_values

    v, lo, hi = panel_values(np.array([0.3, 0.1, 0.2, 0.2]), "rank")
    assert (lo, hi) == (0.0, 100.0) and np.allclose(v, [100, 0, 50, 50])
    model, xy, _, bags = _model_and_bags()
    fig = heatmap_figure(np.full((96, 128, 3), 255, np.uint8), (3072, 2304), heatmap_scores(model, bags), xy,
                         {"5x": 512, "10x": 256}, ["A", "B"], colouring="rank")
    try:
        _, bars = _panels_and_bars(fig)
        assert all(ax.get_ylim() == (0.0, 100.0) for ax in bars)
        assert all(ax.get_ylabel().startswith("percentile rank") for ax in bars)
        assert any("percentile rank among the slide's tiles, not the value" in t.get_text() for t in fig.texts)
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
    assert 'href="ha.png"' in page and 'src="overview/ha.png"' in page and "hb" in page
    assert "<title>MGPATH heatmaps</title>" in page and "attention" in page and "Slide previews" not in page
    table = list(csv.DictReader((out / "index.csv").open()))
    assert [r["slide_id"] for r in table] == ["ha", "hb"]
    assert float(table[0]["p_A"]) + float(table[0]["p_B"]) == pytest.approx(1, abs=1e-3)
    assert (out / "index.png").is_file()


def test_report_plot_has_a_chance_line_and_the_legend_beside_the_bars(tmp_path):
    import json

    import matplotlib.pyplot as plt
    import yaml
    from matplotlib.patches import Rectangle

    from mgpath.report import collect, n_classes, plot_figure, summary_table

    for method, a in (("mgpath", 0.9), ("abmil", 0.8)):
        (tmp_path / method).mkdir()
        (tmp_path / method / "config.yaml").write_text(yaml.safe_dump({"data": {"classes": ["A", "B", "C"]}}))
        for k in range(3):
            (tmp_path / method / f"fold_{k}").mkdir()
            (tmp_path / method / f"fold_{k}" / "result.json").write_text(json.dumps(
                {"fold": k, "auc": a + 0.01 * k, "f1": a - 0.1, "acc": a - 0.05}))
    per_fold = collect(tmp_path)
    assert n_classes(tmp_path) == 3
    fig = plot_figure(per_fold, summary_table(per_fold), classes=n_classes(tmp_path))
    try:
        fig.canvas.draw()
        axes = [ax for ax in fig.axes if ax.patches]
        chance = {ax.get_title(): [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]
                  for ax in axes}
        assert chance == {"test AUC": [0.5], "test macro-F1": [pytest.approx(1 / 3)],
                          "test accuracy": [pytest.approx(1 / 3)]}
        legend = fig.legends[0]
        box = legend.get_window_extent()
        bars = [p.get_window_extent() for ax in axes for p in ax.patches if isinstance(p, Rectangle)]
        assert bars and not any(box.overlaps(b) for b in bars)
        assert box.x1 <= fig.bbox.x1 and box.x0 >= max(b.x1 for b in bars)  # beside the bars, not cut off
        assert any(t.get_text() == "chance (3 classes):\nAUC 0.5, accuracy and F1 1/3" for t in legend.get_texts())
    finally:
        plt.close(fig)
