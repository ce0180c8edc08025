"""Slide reader: levels, MPP from every source, reads at a target MPP on white, errors that say what to do."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from mgpath.slides import MPPError, Slide, SlideError, magnification_to_mpp, mpp_to_magnification
from mgpath.slides.reader import mpp_from_properties


@pytest.mark.parametrize(
    "mpp,levels,ds,size", [(0.25, 4, 2, (2048, 1536)), (0.5, 3, 4, (4000, 3000)), (1.0, 2, 3, (3000, 2100))]
)
def test_generated_pyramid_levels_and_mpp(synthetic, mpp, levels, ds, size):
    syn = synthetic(f"p_{mpp}_{levels}_{ds}.tiff", size=size, mpp=mpp, levels=levels, downsample=ds)
    with Slide(syn.path) as s:
        assert s.dimensions == size
        assert s.level_count == levels
        assert s.level_dimensions == syn.level_dimensions
        for i, d in enumerate(s.level_downsamples):
            assert d == pytest.approx(ds**i, rel=2e-3)
        assert s.mpp == pytest.approx(mpp, rel=1e-9)
        assert s.mpp_source.startswith("openslide.mpp")
        assert s.magnification == pytest.approx(10 / mpp)
        assert s.level_mpp(levels - 1) == pytest.approx(mpp * ds ** (levels - 1), rel=2e-3)


def test_magnification_convention():
    assert magnification_to_mpp(10) == 1.0
    assert magnification_to_mpp(20) == 0.5
    assert magnification_to_mpp(40) == 0.25
    assert mpp_to_magnification(0.25) == 40
    with pytest.raises(ValueError):
        magnification_to_mpp(0)


def test_best_level_and_residual(synthetic):
    syn = synthetic("lv.tiff", size=(2048, 2048), mpp=0.25, levels=4, downsample=2)
    s = Slide(syn.path)
    assert s.best_level_for_mpp(0.25) == (0, 1.0)
    assert s.best_level_for_mpp(1.0) == (2, 1.0)  # 10x from a 40x scan: level 2 exactly
    lvl, res = s.best_level_for_mpp(0.75)  # between levels 1 (0.5) and 2 (1.0)
    assert lvl == 1 and res == pytest.approx(1.5)
    assert s.best_level_for_mpp(100.0)[0] == 3  # coarser than the pyramid: last level
    assert s.best_level_for_mpp(0.1) == (0, pytest.approx(0.4))  # finer than level 0: upsample
    assert s.best_level_for_mpp(0.5 * 1.005)[0] == 1  # within tolerance of a level


def test_read_matches_tiff_pixels_and_is_white_outside(synthetic):
    syn = synthetic("px.tiff", size=(2048, 1536), mpp=0.5, levels=3, downsample=2)
    lvl0 = tifffile.imread(syn.path, key=0)
    lvl1 = tifffile.imread(syn.path, key=1)
    with Slide(syn.path) as s:
        x, y = 600, 500
        assert np.array_equal(s.read((x, y), 256, 0.5), lvl0[y : y + 256, x : x + 256])
        assert np.array_equal(
            s.read((x, y), 128), lvl0[y : y + 128, x : x + 128]
        )  # mpp=None: level-0 resolution
        # 1.0 um/px comes straight from level 1 (no resize)
        assert np.array_equal(s.read((x, y), 200, 1.0), lvl1[y // 2 : y // 2 + 200, x // 2 : x // 2 + 200])
        # 0.75 um/px: level 0 read then shrunk by 1.5
        t = s.read((x, y), 100, 0.75)
        ref = np.asarray(
            Image.fromarray(lvl0[y : y + 150, x : x + 150]).resize((100, 100), Image.Resampling.BILINEAR)
        )
        assert t.shape == (100, 100, 3) and t.dtype == np.uint8 and np.array_equal(t, ref)
        # outside the slide: white, never black
        edge = s.read((1900, 1400), 256, 0.5)
        assert (edge[-100:, -100:] == 255).all()
        neg = s.read((-300, -300), 256, 0.5)
        assert (neg == 255).all()


def test_thumbnail_read_level_and_pickle(synthetic):
    syn = synthetic("th.tiff", size=(3000, 2000), mpp=0.5, levels=3, downsample=2)
    s = Slide(syn.path)
    th = s.thumbnail(300)
    assert th.shape == (200, 300, 3) and th.dtype == np.uint8
    assert s.read_level(2).shape == (500, 750, 3)
    tile = s.read((1000, 800), 64)
    s2 = pickle.loads(pickle.dumps(s))  # handle is not pickled; reopened on first read
    assert s2._osr is None
    assert np.array_equal(s2.read((1000, 800), 64), tile)
    s.close()
    s.close()
    assert np.array_equal(s.read((1000, 800), 64), tile)  # reopens after close


def test_missing_mpp_is_an_error_naming_slide_and_override(synthetic):
    syn = synthetic("nompp.tiff", size=(1024, 1024), mpp=None, levels=2)
    s = Slide(syn.path)
    assert not s.has_mpp
    with pytest.raises(MPPError) as e:
        _ = s.mpp
    msg = str(e.value)
    print(msg)
    assert str(syn.path) in msg and "--mpp" in msg
    s.thumbnail(128)  # reading without MPP still works
    assert Slide(syn.path, mpp=0.5).mpp == 0.5
    assert Slide(syn.path, mpp=0.5).mpp_source == "override"


def test_absurd_mpp_rejected(synthetic):
    syn = synthetic("dpi72.tiff", size=(512, 512), mpp=352.78, levels=1)  # a 72-dpi default
    with pytest.raises(MPPError, match="outside"):
        _ = Slide(syn.path).mpp
    assert Slide(syn.path, mpp=0.25).mpp == 0.25
    with pytest.raises(MPPError, match="positive"):
        Slide(syn.path, mpp=-1)


def test_mpp_sources():
    assert mpp_from_properties({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27"})[0] == pytest.approx(
        0.26
    )
    assert mpp_from_properties({"aperio.MPP": "0.4990"})[:2] == (pytest.approx(0.499), "aperio.MPP")
    v, src, _ = mpp_from_properties({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"})
    assert v == pytest.approx(0.25) and "inch" in src
    v, src, _ = mpp_from_properties({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"})
    assert v == pytest.approx(0.5)
    assert mpp_from_properties({"openslide.comment": "Aperio Image |AppMag = 40|MPP = 0.2525|x"})[
        0
    ] == pytest.approx(0.2525)
    # implausible first source falls through to the next plausible one
    v, src, notes = mpp_from_properties({"openslide.mpp-x": "352.78", "aperio.MPP": "0.5"})
    assert v == 0.5 and src == "aperio.MPP" and any("outside" in n for n in notes)
    v, _, notes = mpp_from_properties({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"})
    assert v is None and notes


def test_non_slide_and_missing_file(tmp_path):
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    with pytest.raises(SlideError, match="notes.svs"):
        Slide(bad)
    with pytest.raises(SlideError, match="does not exist|not a whole-slide"):
        Slide(tmp_path / "missing.svs")


def test_real_aperio_slide(aperio_svs):
    with Slide(aperio_svs) as s:
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        assert s.mpp == pytest.approx(0.499)
        assert s.magnification == pytest.approx(20.04, abs=0.01)
        assert s.objective_power == 20
        t = s.read((900, 1300), 224, 1.0)  # 10x from a 20x scan: level 0 shrunk by ~2.004
        assert t.shape == (224, 224, 3) and t.dtype == np.uint8
        assert t.std() > 5  # real tissue, not a blank


def test_single_level_slide_read_in_blocks(synthetic):
    """A slide without a pyramid is shrunk block by block; the result matches a whole-level read."""
    syn = synthetic("flat.tiff", size=(3000, 2000), mpp=0.5, levels=1)
    with Slide(syn.path) as s:
        whole = s.read_at_downsample(8.0)
        blocks = s.read_at_downsample(8.0, block=700)
    assert whole.shape == blocks.shape == (250, 375, 3)
    diff = np.abs(whole.astype(int) - blocks.astype(int))
    print(f"block vs whole: mean |diff| {diff.mean():.2f}")
    assert diff.mean() < 6
