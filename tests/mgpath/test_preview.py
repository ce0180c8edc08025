"""Readable previews (thumbnail + tissue contours + holes + tile grid) and the contact sheet of a run."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mgpath.slides import Slide
from mgpath.slides.preview import GREEN, render_preview, write_contact_sheet, write_preview
from mgpath.slides.tissue import TissuePolygon, segment_tissue


def test_render_draws_contours_holes_and_tiles_at_thumbnail_scale():
    thumb = np.full((200, 300, 3), 255, np.uint8)
    # a 3000 x 2000 slide drawn at 1/10: tissue square 500..1500, hole 800..1000, one tile at (600, 600) of 400
    sq = np.array([[500, 500], [1500, 500], [1500, 1500], [500, 1500]], float)
    hole = np.array([[800, 800], [1000, 800], [1000, 1000], [800, 1000]], float)
    img = render_preview(thumb, (3000, 2000), [TissuePolygon(sq, [hole])], np.array([[600, 600]]), 400.0,
                         ["title"])
    bar = img.shape[0] - 200
    assert img.shape[1] == 300 and bar > 0
    body = img[bar:]
    assert tuple(body[100, 50]) == GREEN or (body[95:105, 48:53, 1] > 150).any()  # left edge of the square
    assert tuple(body[10, 10]) == (255, 255, 255)  # outside everything: untouched
    assert body[90, 80, 2] > 150 and body[90, 80, 0] < 100  # hole outline is blue (x=800..1000 -> 80..100)
    inside_tile = body[75, 70].astype(int)  # tile 60..100 px: light red wash over white
    assert inside_tile[0] > inside_tile[1] and inside_tile[0] > 200
    assert (img[:bar] < 100).any()  # caption text


def test_write_preview_readable_size_and_contact_sheet(synthetic, tmp_path):
    syn = synthetic("pv.tiff", size=(4096, 3072), mpp=0.5, levels=3, downsample=2)
    with Slide(syn.path) as s:
        t = segment_tissue(s)
        img = write_preview(s, tmp_path / "a.png", t, np.array([[1024, 1024]]), 512, max_side=1024, tag="10x")
        assert max(img.shape[:2]) >= 1024  # the thumbnail's longer side, plus the caption bar
        assert img.shape[1] == 1024
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.shape == img.shape and np.array_equal(back, img)
    # green contour pixels lie on the known outline of the largest piece (within 2 thumbnail px)
    bar = img.shape[0] - 768
    ys, xs = np.nonzero((img[bar:, :, 1] > 140) & (img[bar:, :, 0] < 60) & (img[bar:, :, 2] < 120))
    e = syn.regions[0].outer
    r = np.hypot((xs * 4 - e.cx) / e.rx, (ys * 4 - e.cy) / e.ry)
    near = np.abs(r - 1) < 2 * 4 / min(e.rx, e.ry)
    assert near.sum() > 200
    items = [{"slide_id": "pv", "png": tmp_path / "a.png", "caption": "1 tile"},
             {"slide_id": "broken<1>", "png": None, "caption": "failed"}]
    html_path, png_path = write_contact_sheet(items, tmp_path, cell=256, columns=2)
    page = html_path.read_text()
    assert 'href="a.png"' in page and "broken&lt;1&gt;" in page and "failed" in page
    sheet = np.asarray(Image.open(png_path))
    assert sheet.shape[1] == 2 * (256 + 4) and sheet.shape[0] > 256
    assert not list(tmp_path.glob("*.tmp*"))


def test_tile_run_writes_readable_previews_and_a_contact_sheet(synthetic, tmp_path):
    from mgpath.pipelines.tile import tile_slides
    from mgpath.slides.grid import TileParams

    syn = synthetic("run_a.tiff", size=(4096, 3072), mpp=0.5, levels=3)
    d = tmp_path / "slides"
    d.mkdir()
    (d / "run_a.tiff").symlink_to(syn.path)
    (d / "broken.svs").write_text("not a slide")
    out = tmp_path / "tiles"
    rows = tile_slides([str(d)], out, [TileParams(256, 10.0), TileParams(256, 5.0)], progress=False)
    assert {r["slide_id"]: r["status"] for r in rows} == {"run_a": "done", "broken": "skipped"}
    im = np.asarray(Image.open(out / "10x" / "previews" / "run_a.png"))
    assert im.shape[1] == 2048  # the readable size, not the segmentation image
    page = (out / "previews.html").read_text()
    assert 'href="10x/previews/run_a.png"' in page and 'href="5x/previews/run_a.png"' in page
    assert "broken 10x" in page and "no preview" in page
    assert np.asarray(Image.open(out / "previews.png")).shape[0] > 480
