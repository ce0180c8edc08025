"""The JPEG fast path against OpenSlide (+ antialiased resize) on the real Aperio slide and generated pyramids."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mgpath.slides import Slide, SlideError
from mgpath.slides.jpeg_tiles import JpegTiles, jpeg_levels, plan_read, tile_order


def _tissue_boxes(dims, size0, n, seed=0, min_tissue=0.3, slide=None):
    rng = np.random.default_rng(seed)
    W, H = dims
    out = []
    while len(out) < n:
        xy = (int(rng.integers(0, W - size0)), int(rng.integers(0, H - size0)))
        if slide is None or (slide.read_footprint(xy, size0, 32) < 220).any(-1).mean() >= min_tissue:
            out.append(xy)
    return out


def test_plan_read_picks_level_and_dct_scale():
    ds = [1.0, 4.0, 16.0]
    assert plan_read(ds, 1.0) == (0, 1)
    assert plan_read(ds, 2.0) == (0, 2)  # 20x from a 40x level: half-scale DCT decode
    assert plan_read(ds, 4.0) == (1, 1)  # a level that matches wins over level 0 at 1/4
    assert plan_read(ds, 3.0) == (0, 2)  # never coarser than asked
    assert plan_read(ds, 8.0) == (1, 2)
    assert plan_read(ds, 100.0) == (2, 2)  # 1/4 and below keep one octave for the bilinear resize
    assert plan_read(ds, 100.0, margin=0) == (2, 4)
    assert plan_read([1.0], 8.0) == (0, 4) and plan_read([1.0], 8.0, margin=0) == (0, 8)
    assert plan_read([1.0], 2.0, margin=1) == (0, 1)
    assert plan_read([1.0], 0.5) == (0, 1)


def test_tile_order_groups_tile_rows():
    coords = np.array([[0, 300], [512, 0], [0, 0], [256, 10], [300, 600]])
    order = tile_order(coords, 256)
    # bands of 256 rows: band 0 = rows 0..255 (x 0, 256, 512), band 1 = (0, 300), band 2 = (300, 600)
    assert coords[order].tolist() == [[0, 0], [256, 10], [512, 0], [0, 300], [300, 600]]


def test_real_aperio_full_scale_is_exact_and_reduced_scale_is_bounded(aperio_svs):
    """Full-scale reads equal OpenSlide bit for bit (inside and across the slide's edge). Against OpenSlide +
    antialiased bilinear resize, mean abs difference: a 1/2 read (decoded straight at 1/2 in the DCT domain,
    the default) <= 3.0; a 1/4 read (decoded at 1/2, then halved, the default) <= 1.5; decoded straight at
    1/4 (``dct_margin=0``) <= 4.5, about what PIL's box filter differs from its bilinear one; with
    ``dct_margin=1`` a 1/2 read is identical."""
    ref, fast = Slide(aperio_svs, fast=False), Slide(aperio_svs)
    assert fast.fast and fast.fast_reason == ""
    lv = fast._jpeg.levels[0]
    assert lv.rgb and len(lv.tables) > 4  # Aperio: RGB components, shared JPEG tables
    W, H = ref.dimensions
    for xy, s0 in [((0, 0), 224), ((W - 100, H - 60), 224), ((-50, 37), 300), ((1000, 1000), 512)]:
        a, b = ref.read_footprint(xy, s0, s0), fast.read_footprint(xy, s0, s0)
        assert np.array_equal(a, b), xy
    assert (fast.read_footprint((W - 100, H - 60), 224, 224)[70:, 110:] == 255).all()  # white beyond the slide
    straight, closer = Slide(aperio_svs, fast=True, dct_margin=0), Slide(aperio_svs, fast=True, dct_margin=1)
    # (footprint, default plan, bound for the default, bound straight at the target, bound with margin 1)
    for s0, plan, bound, bound0, bound1 in ((448, (0, 2), 3.0, 3.0, 0.0), (896, (0, 2), 1.5, 4.5, 1.5)):
        diffs, diffs0, diffs1, spread = [], [], [], []
        for xy in _tissue_boxes((W, H), s0, 12, seed=s0, slide=ref):
            full = ref.read_region(xy, 0, (s0, s0))
            r = ref.read_footprint(xy, s0, 224).astype(np.int16)
            box = np.asarray(Image.fromarray(full).resize((224, 224), Image.Resampling.BOX)).astype(np.int16)
            for d, s in ((diffs, fast), (diffs0, straight), (diffs1, closer)):
                d.append(np.abs(r - s.read_footprint(xy, s0, 224).astype(np.int16)).mean())
            spread.append(np.abs(r - box).mean())
        print(
            f"1/{s0 // 224} scale: mean |fast - openslide| {np.mean(diffs):.3f} (default), {np.mean(diffs0):.3f} "
            f"(straight), {np.mean(diffs1):.3f} (margin 1); PIL box vs bilinear {np.mean(spread):.3f}"
        )
        assert fast._jpeg.plan((s0, s0), (224, 224)) == plan
        assert straight._jpeg.plan((s0, s0), (224, 224)) == (0, s0 // 224)  # decoded straight at the target
        assert np.mean(diffs) <= bound and np.mean(diffs0) <= bound0 and np.mean(diffs1) <= bound1
        assert max(diffs0) <= 2 * bound0
        assert np.mean(diffs0) <= 1.1 * np.mean(spread)  # about the spread of standard antialiasing filters


def test_real_aperio_features_agree(aperio_svs):
    """A random ViT's features of 20x-from-40x-style reads agree to cosine >= 0.999 between the two readers."""
    import timm

    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=112).eval()
    ref, fast = Slide(aperio_svs, fast=False), Slide(aperio_svs)
    boxes = _tissue_boxes(ref.dimensions, 224, 8, seed=3, slide=ref)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(s):
        x = torch.from_numpy(np.stack([s.read_footprint(xy, 224, 112) for xy in boxes])).permute(0, 3, 1, 2)
        with torch.no_grad():
            return enc((x.float() / 255 - mean) / std)

    cos = torch.nn.functional.cosine_similarity(feats(ref), feats(fast), dim=1)
    print(f"feature cosine min {cos.min():.5f}")
    assert cos.min() >= 0.999


def test_generated_ycbcr_pyramid_exact_and_each_tile_decoded_once(synthetic):
    syn = synthetic("jp.tiff", size=(3000, 2200), mpp=0.25, levels=3, downsample=4, compression="jpeg")
    levels, why = jpeg_levels(syn.path)
    assert why == "" and [(lv.width, lv.height) for lv in levels] == syn.level_dimensions
    assert not levels[0].rgb and levels[0].tables == b""  # tifffile writes YCbCr tiles with their own tables
    ref, fast = Slide(syn.path, fast=False), Slide(syn.path)
    assert fast.fast
    for xy in [(0, 0), (700, 900), (2900, 2100)]:
        assert np.array_equal(ref.read_footprint(xy, 256, 256), fast.read_footprint(xy, 256, 256))  # level 0
        assert np.array_equal(ref.read_footprint(xy, 1024, 256), fast.read_footprint(xy, 1024, 256))  # level 1
    # reading a whole 20x grid in tile order decodes every needed stored tile exactly once
    jt = JpegTiles(syn.path, cache_mb=8)
    xs = np.arange(0, 3000 - 448, 448)
    ys = np.arange(0, 2200 - 448, 448)
    coords = np.array([(x, y) for y in ys for x in xs])[::-1]
    coords = coords[tile_order(coords, 256)]
    needed = {key for xy in coords for key in jt.tiles_needed(xy, 448, 224)}
    for xy in coords:
        jt.read_footprint(xy, 448, 224)
    span = -(-(xs[-1] + 448) // 256) * -(-(ys[-1] + 448) // 256)  # stored tiles under the grid
    assert jt.decoded == len(needed) == span


def test_fast_slide_pickles_and_reads_in_a_copy(synthetic):
    syn = synthetic("jpk.tiff", size=(1024, 1024), mpp=0.5, levels=2, compression="jpeg")
    with Slide(syn.path, fast=True) as s:
        a = s.read_footprint((100, 100), 512, 128)
        b = pickle.loads(pickle.dumps(s))
        assert b.fast and b._jpeg.decoded == 0
        assert np.array_equal(b.read_footprint((100, 100), 512, 128), a)
        b.close()


def test_non_jpeg_slide_falls_back_to_openslide(synthetic):
    syn = synthetic("zl.tiff", size=(1024, 1024), mpp=0.5, levels=2, compression="zlib")
    with Slide(syn.path) as s, Slide(syn.path, fast=False) as r:
        assert not s.fast and "not JPEG" in s.fast_reason
        assert np.array_equal(s.read_footprint((10, 20), 300, 128), r.read_footprint((10, 20), 300, 128))
    levels, why = jpeg_levels(syn.path.parent / "missing.tiff")
    assert levels == [] and "not a readable TIFF" in why
    with pytest.raises(ValueError, match="no JPEG fast path"):
        JpegTiles(syn.path)


def test_corrupt_tile_is_a_slide_error_naming_the_file(synthetic, tmp_path):
    syn = synthetic("bad.tiff", size=(1024, 1024), mpp=0.5, levels=1, compression="jpeg")
    lv = jpeg_levels(syn.path)[0][0]
    raw = bytearray(syn.path.read_bytes())
    off, n = int(lv.offsets[5]), int(lv.counts[5])
    raw[off + 2 : off + n] = b"\x00" * (n - 2)  # keep SOI, wipe the rest of tile 5
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(bytes(raw))
    with Slide(bad, fast=True) as s:
        assert s.fast
        s.read_footprint((0, 0), 256, 256)  # tile 0 is fine
        with pytest.raises(SlideError, match=r"bad\.tiff"):
            s.read_footprint((256, 256), 256, 256)  # tile 5 of a 4 x 4 grid


def test_extraction_with_the_fast_reader(aperio_svs, tmp_path):
    """`mgpath extract` (the fast reader by default) on the real svs: features within cosine 0.999 of
    ``--reader openslide``'s, and the reader is part of the cache identity (the OpenSlide run's files are stale
    for it)."""
    import timm

    from mgpath.commands.extract import main as extract_main
    from mgpath.commands.tile import main as tile_main
    from mgpath.io import read_features

    torch.manual_seed(0)
    ckpt = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).state_dict(),
               ckpt)
    tiles = tmp_path / "tiles"
    assert tile_main([str(aperio_svs), "--out", str(tiles), "--magnification", "10", "--no-progress"]) == 0
    common = ["--coords", str(tiles), "--slides", str(aperio_svs.parent), "--encoder", "vit_tiny_patch16_224",
              "--checkpoint", str(ckpt), "--img-size", "64", "--workers", "0", "--accelerator", "cpu",
              "--no-progress"]
    assert extract_main([*common, "--out", str(tmp_path / "os"), "--reader", "openslide"]) == 0
    assert extract_main([*common, "--out", str(tmp_path / "fast")]) == 0
    a = torch.from_numpy(read_features(tmp_path / "os" / "10x" / "cmu_small_region.h5")["features"])
    b = torch.from_numpy(read_features(tmp_path / "fast" / "10x" / "cmu_small_region.h5")["features"])
    assert a.shape == b.shape and not torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() >= 0.999
    # the OpenSlide-reader features are not reused by a fast-reader run
    assert extract_main([*common, "--out", str(tmp_path / "os"), "--reader", "fast"]) == 1
