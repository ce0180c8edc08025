"""Tiling: exact grids, tissue fractions, h5 layout (ours, CLAM, TRIDENT), bad inputs, resume, the real slide."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
import tifffile

from mgpath import io as mgpath_io
from mgpath.commands.tile import main
from mgpath.io import read_coords
from mgpath.pipelines.tile import tile_slide, tile_slides
from mgpath.slides.grid import TileParams, tile_grid, tissue_fraction


def _grid(xs, ys):
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], 1)


def test_tile_grid_exact():
    # 10x tiles of 256 px on a 0.25 um/px slide: 1024 level-0 px
    assert np.array_equal(tile_grid((5000, 3000), 1024, 1024), _grid([0, 1024, 2048, 3072], [0, 1024]))
    # overlap 64 target px -> step 768
    assert np.array_equal(tile_grid((5000, 3000), 1024, 768), _grid(np.arange(6) * 768, np.arange(3) * 768))
    # edge tiles: every tile starting inside the slide
    assert np.array_equal(
        tile_grid((5000, 3000), 1024, 1024, edge=True), _grid(np.arange(5) * 1024, [0, 1024, 2048])
    )
    # a tile exactly as large as the slide, and a slide smaller than one tile
    assert np.array_equal(tile_grid((1024, 1024), 1024, 1024), [[0, 0]])
    assert tile_grid((1000, 5000), 1024, 1024).shape == (0, 2)
    # non-integer footprint (10x on 0.3 um/px): corners are rounded multiples of the exact step
    g = tile_grid((3500, 900), 256 / 0.3, 256 / 0.3)
    assert np.array_equal(g, [[0, 0], [853, 0], [1707, 0], [2560, 0]])


def test_tissue_fraction_exact():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.5
    full = np.kron(mask, np.ones((4, 4), bool))  # level-0 view, 4 level-0 px per mask px
    coords = np.array([[0, 0], [3, 5], [17, 9], [100, 60], [110, 70], [-4, -4]])
    size = 13
    frac = tissue_fraction(mask, (4.0, 4.0), coords, size)
    pad = np.zeros((full.shape[0] + 40, full.shape[1] + 40), bool)
    pad[20:-20, 20:-20] = full  # area beyond the slide counts as no tissue
    ref = [pad[y + 20 : y + 20 + size, x + 20 : x + 20 + size].mean() for x, y in coords]
    assert np.allclose(frac, ref, atol=1e-12)


def test_tiles_follow_tissue(synthetic, tmp_path):
    syn = synthetic("follow.tiff", size=(8192, 6144), mpp=0.5, levels=4)
    tp = TileParams(tile_size=128, magnification=10, min_tissue=0.5)
    row = tile_slide(syn.path, tmp_path, tp)
    assert row["status"] == "done", row
    coords, attrs = read_coords(tmp_path / "10x" / "coords" / "follow.h5")
    # independent: ground-truth fraction of every grid tile from the analytic mask at 4 level-0 px per pixel
    gt = syn.mask(downsample=4)
    grid = tile_grid(syn.dimensions, 256, 256)
    frac = np.array([gt[y // 4 : (y + 256) // 4, x // 4 : (x + 256) // 4].mean() for x, y in grid])
    kept = {tuple(c) for c in coords}
    sure_in = {tuple(c) for c, f in zip(grid, frac) if f >= 0.6}
    sure_out = {tuple(c) for c, f in zip(grid, frac) if f <= 0.4}
    assert sure_in <= kept and not (sure_out & kept)
    assert abs(len(kept) - (frac >= 0.5).sum()) <= 0.03 * len(kept)
    print(f"{len(kept)} tiles kept, {(frac >= 0.5).sum()} by ground truth")
    with h5py.File(tmp_path / "10x" / "coords" / "follow.h5") as f:
        tf = f["tissue_fraction"][()]
        assert tf.min() >= 0.5 and f["coords"].dtype == np.int64
        a = dict(f["coords"].attrs)
    assert a["patch_size"] == 128 and a["patch_size_level0"] == 256 and a["patch_level"] == 1
    assert a["target_magnification"] == 10 and a["mpp"] == 0.5 and a["target_mpp"] == 1.0
    assert list(a["downsample"]) == [2.0, 2.0] and a["level0_magnification"] == 20
    assert attrs["source"] == "mgpath" and attrs["step_level0"] == 256 and attrs["slide_id"] == "follow"


def test_read_coords_clam_and_trident(tmp_path):
    xy = np.array([[0, 0], [512, 0], [0, 512]])
    with h5py.File(tmp_path / "slideA.h5", "w") as f:  # CLAM patches/<slide>.h5: attrs on the dataset
        d = f.create_dataset("coords", data=xy)
        d.attrs.update(
            {
                "patch_size": 256,
                "patch_level": 1,
                "downsample": np.array([2.0, 2.0]),
                "downsampled_level_dim": np.array([1000, 800]),
                "level_dim": np.array([1000, 800]),
                "name": "slideA",
                "save_path": "/x",
            }
        )
    c, a = read_coords(tmp_path / "slideA.h5")
    assert np.array_equal(c, xy) and a["source"] == "clam"
    assert a["patch_size"] == 256 and a["patch_size_level0"] == 512 and a["patch_level"] == 1
    assert a["target_mpp"] is None and a["slide_id"] == "slideA"
    with h5py.File(tmp_path / "slideB_patches.h5", "w") as f:  # TRIDENT
        d = f.create_dataset("coords", data=xy)
        d.attrs.update(
            {
                "patch_size": 256,
                "patch_size_level0": 512,
                "level0_magnification": 20,
                "target_magnification": 10,
                "overlap": 32,
                "level0_width": 2000,
                "level0_height": 1600,
            }
        )
    c, a = read_coords(tmp_path / "slideB_patches.h5")
    assert (
        a["source"] == "trident" and a["slide_id"] == "slideB" and a["target_mpp"] == 1.0 and a["mpp"] == 0.5
    )
    assert a["patch_size_level0"] == 512 and a["step_level0"] == 448
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="coords"):
        read_coords(tmp_path / "bad.h5")
    (tmp_path / "junk.h5").write_text("x")
    with pytest.raises(ValueError, match="not a readable h5"):
        read_coords(tmp_path / "junk.h5")


def test_known_layout_cli_two_magnifications(synthetic, tmp_path, capsys):
    syn = synthetic("layout.tiff", size=(5000, 3000), mpp=0.25, levels=3, downsample=4)
    out = tmp_path / "out"
    rc = main(
        [
            str(syn.path),
            "--out",
            str(out),
            "--magnification",
            "10",
            "5",
            "--tile-size",
            "256",
            "--no-tissue",
            "--no-progress",
        ]
    )
    assert rc == 0
    c10, a10 = read_coords(out / "10x" / "coords" / "layout.h5")
    c5, a5 = read_coords(out / "5x" / "coords" / "layout.h5")
    assert np.array_equal(c10, _grid([0, 1024, 2048, 3072], [0, 1024]))
    assert np.array_equal(c5, [[0, 0], [2048, 0]])
    assert (
        a10["raw"]["patch_level"] == 1 and a5["raw"]["patch_level"] == 1
    )  # level 1 = 1 um/px; 5x resized 2x
    assert a5["patch_size_level0"] == 2048
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["status"] == "done" and rows[0]["tiles_10x"] == "8" and rows[0]["tiles_5x"] == "2"
    assert (out / "10x" / "previews" / "layout.png").exists() and (
        out / "5x" / "previews" / "layout.png"
    ).exists()
    assert "1 slide: 1 done" in capsys.readouterr().out
    # overlap and mpp target
    main(
        [
            str(syn.path),
            "--out",
            str(tmp_path / "o2"),
            "--mpp-target",
            "1.0",
            "--overlap",
            "64",
            "--no-tissue",
            "--no-progress",
        ]
    )
    c, a = read_coords(tmp_path / "o2" / "mpp1" / "coords" / "layout.h5")
    assert np.array_equal(c, _grid(np.arange(6) * 768, np.arange(3) * 768)) and a["step_level0"] == 768
    # bad arguments are usage errors
    assert main([str(syn.path), "--out", str(tmp_path / "o3"), "--overlap", "300"]) == 2
    assert main([str(syn.path), "--out", str(tmp_path / "o3"), "--min-tissue", "2"]) == 2


def _corrupt_last_level(src, dst):
    """Copy a slide and overwrite the tile data of its smallest level (which segmentation reads)."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as t:
        page = t.pages[len(t.pages) - 1]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    with open(dst, "r+b") as f:
        for off, n in spans:
            f.seek(off)
            f.write(b"\x13" * n)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, slide_dir):
    from mgpath.slides.synthetic import make_synthetic_slide

    d = tmp_path_factory.mktemp("bad")
    shutil.copy(slide_dir / "s0_ihc.tiff", d / "good.tiff")
    _corrupt_last_level(slide_dir / "s0_ihc.tiff", d / "corrupt.tiff")
    data = (slide_dir / "s1_he.tiff").read_bytes()
    (d / "truncated.svs").write_bytes(data[: len(data) // 2])
    (d / "notes.svs").write_text("this is not a slide")
    (d / "readme.txt").write_text("ignored: not a slide extension")
    make_synthetic_slide(d / "nompp.tiff", size=(3072, 2048), mpp=None, levels=3)
    make_synthetic_slide(d / "blank.tiff", size=(2048, 2048), mpp=0.5, levels=2, layout="none")
    return d


def test_bad_inputs_reported_and_skipped(bad_folder, tmp_path):
    out = tmp_path / "out"
    rc = main([str(bad_folder), "--out", str(out), "--no-progress"])
    assert rc == 1
    with open(out / "summary.csv") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"good", "corrupt", "truncated", "notes", "nompp", "blank"}
    assert rows["good"]["status"] == "done" and int(rows["good"]["tiles_10x"]) > 0
    for sid in ("corrupt", "truncated", "notes", "nompp", "blank"):
        assert rows[sid]["status"] == "skipped", rows[sid]
        print(f"{sid}: {rows[sid]['reason']}")
    assert "corrupt" in rows["corrupt"]["reason"] and "corrupt.tiff" in rows["corrupt"]["reason"]
    assert "not a whole-slide image" in rows["notes"]["reason"]
    assert "truncated.svs" in rows["truncated"]["reason"]
    assert "MPP" in rows["nompp"]["reason"] and "--mpp" in rows["nompp"]["reason"]
    assert "no tissue" in rows["blank"]["reason"]
    assert json.loads((out / "summary.json").read_text())["counts"] == {"done": 1, "cached": 0, "skipped": 5}
    assert sorted(p.name for p in (out / "10x" / "coords").iterdir()) == ["good.h5"]
    # fixing the missing MPP with a per-slide CSV override: only that slide is new, the good one is cached
    (tmp_path / "mpp.csv").write_text("slide_id,mpp\nnompp,0.5\n")
    main([str(bad_folder), "--out", str(out), "--mpp-csv", str(tmp_path / "mpp.csv"), "--no-progress"])
    with open(out / "summary.csv") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows["nompp"]["status"] == "done" and rows["good"]["status"] == "cached"
    assert rows["nompp"]["mpp_source"] == "override"


def test_parallel_workers_match_serial(slide_dir, tmp_path):
    tp = [TileParams(magnification=10), TileParams(magnification=5)]
    r1 = tile_slides([str(slide_dir)], tmp_path / "a", tp, workers=1, progress=False)
    r2 = tile_slides([str(slide_dir)], tmp_path / "b", tp, workers=2, progress=False)
    assert [r["status"] for r in r2] == ["done", "done"]
    assert [r["tiles_10x"] for r in r1] == [r["tiles_10x"] for r in r2]
    for sid in ("s0_ihc", "s1_he"):
        for tag in ("10x", "5x"):
            a, _ = read_coords(tmp_path / "a" / tag / "coords" / f"{sid}.h5")
            b, _ = read_coords(tmp_path / "b" / tag / "coords" / f"{sid}.h5")
            assert np.array_equal(a, b)


def _outputs(out):
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("summary"))
    res = {}
    for p in files:
        if p.suffix == ".h5":
            with h5py.File(p) as f:
                res[str(p.relative_to(out))] = (
                    f["coords"][()].tolist(),
                    sorted((k, str(v)) for k, v in f.attrs.items()),
                )
        else:
            res[str(p.relative_to(out))] = p.read_bytes()
    return res


def test_resume_after_interruption(slide_dir, tmp_path, monkeypatch):
    tp = [TileParams(magnification=10), TileParams(magnification=5)]
    fresh = tmp_path / "fresh"
    tile_slides([str(slide_dir)], fresh, tp, progress=False)

    out = tmp_path / "out"
    real = mgpath_io.write_h5_atomic
    calls = {"n": 0}

    def dying(path, fill):  # the 3rd coords file (slide 2, 10x) dies half-way through writing
        calls["n"] += 1
        if calls["n"] == 3:

            def half(f):
                f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
                raise KeyboardInterrupt("killed")

            return real(path, half)
        return real(path, fill)

    monkeypatch.setattr(mgpath_io, "write_h5_atomic", dying)
    with pytest.raises(KeyboardInterrupt):
        tile_slides([str(slide_dir)], out, tp, progress=False)
    monkeypatch.setattr(mgpath_io, "write_h5_atomic", real)
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind
    assert not (out / "10x" / "coords" / "s1_he.h5").exists()
    (out / "10x" / "coords" / "stale.h5.x1y2.tmp").write_bytes(b"partial")  # as a kill -9 would leave
    rows = tile_slides([str(slide_dir)], out, tp, progress=False)
    assert [r["status"] for r in rows] == ["cached", "done"]
    assert not list(out.rglob("*.tmp"))
    assert _outputs(out) == _outputs(fresh)
    # a third run redoes nothing; changed settings are refused rather than silently overwritten
    assert [r["status"] for r in tile_slides([str(slide_dir)], out, tp, progress=False)] == [
        "cached",
        "cached",
    ]
    r = tile_slide(slide_dir / "s0_ihc.tiff", out, TileParams(magnification=10, min_tissue=0.9))
    assert r["status"] == "skipped" and "different settings" in r["reason"] and "--overwrite" in r["reason"]
    assert (
        tile_slide(
            slide_dir / "s0_ihc.tiff", out, TileParams(magnification=10, min_tissue=0.9), overwrite=True
        )["status"]
        == "done"
    )


def test_real_aperio_slide_tiles(aperio_svs, tmp_path):
    out = tmp_path / "out"
    rc = main([str(aperio_svs.parent), "--out", str(out), "--magnification", "10", "20", "--no-progress"])
    assert rc == 0
    c10, a10 = read_coords(out / "10x" / "coords" / "cmu_small_region.h5")
    c20, _ = read_coords(out / "20x" / "coords" / "cmu_small_region.h5")
    print(f"Aperio cmu_small_region: {len(c10)} tiles at 10x, {len(c20)} at 20x")
    assert a10["mpp"] == pytest.approx(0.499) and a10["patch_size_level0"] == pytest.approx(256 / 0.499)
    assert len(c20) > 2 * len(c10) > 0  # 4x as many tiles at 20x, up to tissue borders
    assert (out / "geojson" / "cmu_small_region.geojson").exists()
    assert (out / "10x" / "previews" / "cmu_small_region.png").exists()
