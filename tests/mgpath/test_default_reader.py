"""The default reader (JPEG fast path where the slide allows it, OpenSlide otherwise) against OpenSlide, and
the one-read-per-level tiling path: whole levels, shared reads, the segmentation's shortcuts."""

from __future__ import annotations

import numpy as np
import pytest

from mgpath.pipelines.jobs import SlideJob
from mgpath.pipelines.tile_dataset import TileDataset
from mgpath.slides.reader import Slide
from mgpath.slides.tissue import TissueParams, segment_image, segment_tissue


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    """A 40x-like JPEG pyramid (0.25 um/px, levels x4, 256-px tiles), as the benchmarks generate them."""
    from mgpath.slides.synthetic import make_synthetic_slide

    d = tmp_path_factory.mktemp("jpeg_pyramid")
    return make_synthetic_slide(d / "p.tiff", size=(4096, 3072), mpp=0.25, levels=3, downsample=4,
                                tissue_class=0, compression="jpeg", tile=256).path


def _tissue_corners(slide: Slide, size0: int, n: int) -> np.ndarray:
    th = slide.thumbnail(256)
    f = slide.dimensions[0] / th.shape[1]
    ys, xs = np.nonzero(th.min(axis=2) < 200)
    pick = np.linspace(0, len(xs) - 1, n).astype(int)
    return np.clip(np.stack([xs[pick], ys[pick]], 1) * f - size0 / 2, 0, None).astype(np.int64)


@pytest.mark.parametrize("which", ["generated", "aperio"])
def test_default_reader_within_bounds_of_openslide(which, jpeg_slide, aperio_svs):
    """Same pixels as OpenSlide at full scale and when a level matches; a 1/2 footprint (20x from 40x, decoded
    at 1/2 in the DCT domain) within a mean abs 3.0 per channel, as the fast path documents."""
    path = jpeg_slide if which == "generated" else aperio_svs
    ref, new = Slide(path, fast=False), Slide(path)
    assert new.fast and not ref.fast
    boxes = _tissue_corners(ref, 448, 10)
    diffs = []
    for xy in boxes:
        assert np.array_equal(new.read_footprint(xy, 224, 224), ref.read_footprint(xy, 224, 224))
        a, b = new.read_footprint(xy, 448, 224), ref.read_footprint(xy, 448, 224)
        diffs.append(np.abs(a.astype(np.int16) - b).mean())
        if which == "generated":  # 10x: level 1 read as stored by both
            assert np.array_equal(new.read_footprint(xy, 896, 224), ref.read_footprint(xy, 896, 224))
    print(f"{which}: mean |default - openslide| at 1/2: {np.mean(diffs):.3f} (max {np.max(diffs):.3f})")
    assert np.mean(diffs) <= 3.0 and max(diffs) <= 6.0
    for lvl in range(ref.level_count):  # whole levels: the same pixels
        w, h = ref.level_dimensions[lvl]
        assert np.array_equal(new.read_level(lvl), ref.read_region((0, 0), lvl, (w, h)))


def test_tile_dataset_reads_with_the_default_reader(jpeg_slide):
    with Slide(jpeg_slide) as s:
        xy = _tissue_corners(s, 448, 4)
        want = np.stack([s.read_footprint(c, 448, 224) for c in xy])
    job = SlideJob("p", str(jpeg_slide), "", "", xy, {"patch_size": 224, "patch_size_level0": 448, "mpp": 0.25})
    ds = TileDataset([job], (224, 224), (0, 0, 0), (1, 1, 1))
    assert ds.reader == "fast"
    got = np.stack([ds.read_tile(0, i, 224) for i in range(len(xy))])
    assert np.array_equal(got, want)


def test_levels_read_once_while_sharing(jpeg_slide, monkeypatch):
    """Segmentation and the preview thumbnail of one slide decode each stored tile of the level once, and
    OpenSlide reads no region."""
    import openslide

    with Slide(jpeg_slide) as s:
        calls = []
        monkeypatch.setattr(openslide.OpenSlide, "read_region", lambda *a, **k: calls.append(a))
        with s.sharing_levels():
            tissue = segment_tissue(s)  # 4096 px at 0.25 um/px: 1024 px at 1 um/px = level 1 as stored
            thumb = s.thumbnail(1024, resample="area")
            assert not thumb.flags.writeable and tissue.image is thumb
        lv = s._level_tiles.levels[1]
        assert s._level_tiles.decoded == lv.grid[0] * lv.grid[1] and calls == []
        assert s.thumbnail(512, resample="area").shape == (384, 512, 3)  # outside the block: read again
        assert s._level_tiles.decoded > lv.grid[0] * lv.grid[1]
    with pytest.raises(ValueError, match="resample"):
        Slide(jpeg_slide).thumbnail(64, resample="cubic")


def _reference_segmentation(rgb, mpp, p):
    """The fixed-threshold segmentation spelled out on the whole image with OpenCV's median blur."""
    import cv2

    from mgpath.slides.tissue import _odd

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = np.where(hsv[..., 2] < p.black_value, 0, hsv[..., 1]).astype(np.uint8) if p.black_value else hsv[..., 1]
    k = min(_odd(p.median_um / mpp), 255)
    sat = cv2.medianBlur(np.ascontiguousarray(sat), k) if k > 1 else sat
    mask = (sat > p.min_saturation).astype(np.uint8)
    c = _odd(p.close_um / mpp) if p.close_um > 0 else 0
    if c > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (c, c)))
    px = (mpp / 1000.0) ** 2
    _, lab, st, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4)
    h, w = mask.shape
    small = (st[:, 4] < p.min_hole_mm2 / px) & (st[:, 0] > 0) & (st[:, 1] > 0)
    small &= (st[:, 0] + st[:, 2] < w) & (st[:, 1] + st[:, 3] < h)
    mask[small[lab] & (mask == 0)] = 1
    _, lab, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = st[:, 4] >= p.min_tissue_mm2 / px
    keep[0] = False
    return keep[lab]


def test_segmentation_equals_the_whole_image_median_pipeline():
    """Working on the tissue box with the median as a vote gives the whole-image median pipeline's mask
    exactly: random pictures with blobs at the borders, speckle (many small pieces and holes), big kernels."""
    rng = np.random.default_rng(1)
    for i in range(24):
        h, w = (int(v) for v in rng.integers(40, 300, 2))
        im = np.full((h, w, 3), 240, np.uint8)
        for _ in range(int(rng.integers(0, 6))):
            y, x = (int(v) for v in rng.integers(-20, max(h, w), 2))
            hh, ww = (int(v) for v in rng.integers(1, 120, 2))
            im[max(0, y) : y + hh, max(0, x) : x + ww] = rng.integers(0, 255, 3)
        im[rng.random((h, w)) < rng.random() * 0.05] = (200, 60, 120)
        mpp = float(rng.choice([1.0, 2.0, 4.0, 8.0]))
        p = TissueParams(close_um=float(rng.choice([0.0, 32.0])), black_value=int(rng.choice([0, 30])))
        _, mask, thr = segment_image(im, mpp, p)
        assert thr == p.min_saturation and mask.shape == (h, w)
        assert np.array_equal(mask, _reference_segmentation(im, mpp, p)), i
