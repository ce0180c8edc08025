"""Feature extraction through Lightning predict equals a direct forward; adjacency; resume; bad slides."""

from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np
import pytest
import timm
import torch

from mgpath.commands.extract import main
from mgpath.commands.tile import main as tile_main
from mgpath.graph import adjacency_to_edge_index, tile_adjacency
from mgpath.io import read_features
from mgpath.pipelines.extract import extract_features
from mgpath.pipelines.jobs import find_jobs
from mgpath.slides import Slide
from mgpath.slides.grid import tile_grid


# -- adjacency -----------------------------------------------------------------------------------------
def test_adjacency_known_grid_with_index_zero():
    # 3 x 3 grid, step 100, centre-right tile (x=200, y=100) missing; row-major order
    coords = np.array([[0, 0], [100, 0], [200, 0], [0, 100], [100, 100], [0, 200], [100, 200], [200, 200]])
    adj = tile_adjacency(coords, 100)
    #                       left right up down
    expected = np.array(
        [
            [-1, 1, -1, 3],  # 0
            [0, 2, -1, 4],  # 1: left neighbour is tile 0 (the official code drops it)
            [1, -1, -1, -1],  # 2: below it is the missing tile
            [-1, 4, 0, 5],  # 3: up is tile 0
            [3, -1, 1, 6],  # 4
            [-1, 6, 3, -1],  # 5
            [5, 7, 4, -1],  # 6
            [6, -1, -1, -1],
        ]
    )  # 7: up is the missing tile
    assert adj.dtype == np.int64 and np.array_equal(adj, expected)
    # same answer from a shuffled order (indices follow the rows)
    perm = np.random.default_rng(0).permutation(len(coords))
    adj_p = tile_adjacency(coords[perm], 100)
    inv = np.argsort(perm)
    remapped = np.where(expected[perm] >= 0, inv[np.maximum(expected[perm], 0)], -1)
    assert np.array_equal(adj_p, remapped)
    ei = adjacency_to_edge_index(adj)
    assert ei.shape == (2, 18)  # 9 undirected grid edges among 8 tiles, both directions
    pairs = set(map(tuple, ei.T))
    assert all((b, a) in pairs for a, b in pairs) and (0, 1) in pairs and (1, 0) in pairs
    assert np.array_equal(tile_adjacency(torch.tensor(coords), 100), expected)


def test_adjacency_single_empty_and_rounded():
    assert np.array_equal(tile_adjacency(np.array([[512, 1024]]), 512), [[-1, -1, -1, -1]])
    assert adjacency_to_edge_index(tile_adjacency(np.array([[512, 1024]]), 512)).shape == (2, 0)
    assert tile_adjacency(np.zeros((0, 2)), 512).shape == (0, 4)
    # non-integer step (10x tiles on a 0.3 um/px slide): corners rounded to integers still connect
    step = 256 / 0.3
    g = tile_grid((4000, 3000), step, step)
    adj = tile_adjacency(g, step)
    nx, ny = 4, 3
    assert len(g) == nx * ny
    assert (adj[:, 1] >= 0).sum() == (nx - 1) * ny and (adj[:, 3] >= 0).sum() == nx * (ny - 1)
    # tiles one step apart diagonally or two steps apart are not neighbours
    assert np.array_equal(tile_adjacency(np.array([[0, 0], [100, 100], [200, 0]]), 100), -np.ones((3, 4)))
    with pytest.raises(ValueError):
        tile_adjacency(g, 0)


# -- extraction ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A random-init ViT-Tiny at 64 px saved as a plain state dict, and the module it came from."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_vit.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def tiny_enc(tiny_vit):
    """The checkpoint loaded back through ``vapt.backbones.build_backbone``."""
    from vapt.backbones import build_backbone as build_encoder

    return build_encoder("vit_tiny_patch16_224", checkpoint=tiny_vit[0], img_size=64)


@pytest.fixture(scope="module")
def tiled(slide_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles")
    assert (
        tile_main(
            [
                str(slide_dir),
                "--out",
                str(out),
                "--magnification",
                "5",
                "2.5",
                "--tile-size",
                "96",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def _direct(model, slide_path, coords_file, mean, std, size=64):
    """Independent reference: read each tile at the file's resolution, preprocess, forward the timm model."""
    with h5py.File(coords_file) as f:
        xy = f["coords"][()]
        ps, mpp = int(f.attrs["patch_size"]), float(f.attrs["target_mpp"])
    with Slide(slide_path) as s:
        # the tile of ps px at mpp um/px covers ps * mpp / slide_mpp level-0 px; read it at the encoder's size
        tiles = np.stack([s.read_footprint(c, ps * mpp / s.mpp, size) for c in xy])
    return _forward(model, tiles, mean, std), xy


def _forward(model, tiles, mean, std):
    """``(N, H, W, 3)`` uint8 tiles -> [0, 1] -> normalise (float64) -> model."""
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).double() / 255
    x = (x - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x.float()).numpy()


def test_extract_equals_direct_forward(tiled, slide_dir, tiny_vit, tmp_path):
    ckpt, model = tiny_vit
    out = tmp_path / "feats"
    rc = main(
        [
            "--coords",
            str(tiled),
            "--slides",
            str(slide_dir),
            "--encoder",
            "vit_tiny_patch16_224",
            "--checkpoint",
            str(ckpt),
            "--img-size",
            "64",
            "--out",
            str(out),
            "--batch-size",
            "16",
            "--workers",
            "2",
            "--accelerator",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    with open(out / "features_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    for tag in ("5x", "2.5x"):
        for sid in ("s0_ihc", "s1_he"):
            d = read_features(out / tag / f"{sid}.h5")
            mean, std = tuple(d["attrs"]["mean"]), tuple(d["attrs"]["std"])
            ref, xy = _direct(
                model, slide_dir / f"{sid}.tiff", tiled / tag / "coords" / f"{sid}.h5", mean, std
            )
            assert d["features"].dtype == np.float32 and d["features"].shape == (len(xy), 192)
            assert np.array_equal(d["coords"], xy)
            np.testing.assert_allclose(d["features"], ref, atol=1e-5, rtol=0)
            step = float(d["attrs"]["step_level0"])
            assert np.array_equal(d["adjacency"], tile_adjacency(xy, step))
            assert d["attrs"]["encoder"] == "vit_tiny_patch16_224" and str(ckpt) in d["attrs"]["checkpoint"]
    # tiles differ between the two tissue classes (the encoder sees the slide, not a constant)
    a = read_features(out / "5x" / "s0_ihc.h5")["features"]
    b = read_features(out / "5x" / "s1_he.h5")["features"]
    assert np.abs(a.mean(0) - b.mean(0)).max() > 1e-3


def test_extract_resume_and_bad_slide(tiled, slide_dir, tiny_vit, tiny_enc, tmp_path):
    ckpt, enc = tiny_vit[0], tiny_enc
    slides = tmp_path / "slides"
    shutil.copytree(slide_dir, slides)
    out = tmp_path / "feats"
    jobs, problems = find_jobs(tiled / "2.5x" / "coords", out, str(slides))
    assert not problems and len(jobs) == 2
    def run():
        return extract_features(jobs, enc, "vit_tiny_patch16_224", checkpoint=str(ckpt), batch_size=32, workers=0,
                                accelerator="cpu", progress=False)

    rows = run()
    assert [r["status"] for r in rows] == ["done", "done"]
    first = read_features(out / "s1_he.h5")["features"]
    # resume: existing outputs are kept; a deleted one is redone identically
    (out / "s1_he.h5").unlink()
    rows = run()
    assert sorted(r["status"] for r in rows) == ["cached", "done"]
    np.testing.assert_allclose(read_features(out / "s1_he.h5")["features"], first, atol=1e-6)
    assert not list(out.glob("*.tmp"))
    # a slide that became unreadable is reported; a missing one too; the rest go on
    (slides / "s0_ihc.tiff").write_text("garbage")
    (slides / "s1_he.tiff").unlink()
    jobs, problems = find_jobs(tiled / "2.5x" / "coords", tmp_path / "f2", str(slides))
    assert len(problems) == 1 and "not found" in problems[0]["reason"]
    rows = extract_features(
        jobs, enc, "vit_tiny_patch16_224", batch_size=32, workers=0, accelerator="cpu", progress=False
    )
    assert rows[0]["status"] == "skipped" and "not a whole-slide image" in rows[0]["reason"]


def test_extract_corrupt_tiles_reported(tiled, slide_dir, tiny_enc, tmp_path):
    """A slide that opens but whose tile data is corrupt is reported; its features are not written."""
    import tifffile

    slides = tmp_path / "slides"
    shutil.copytree(slide_dir, slides)
    with tifffile.TiffFile(slides / "s0_ihc.tiff") as t:  # level 2 is what 2.5x tiles at 64 px read from
        page = t.pages[2]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(slides / "s0_ihc.tiff", "r+b") as f:
        for off, n in spans:
            f.seek(off)
            f.write(b"\x13" * n)
    jobs, _ = find_jobs(tiled / "2.5x" / "coords", tmp_path / "f", str(slides))
    rows = extract_features(jobs, tiny_enc, "tiny", batch_size=8, workers=0, accelerator="cpu", progress=False)
    by = {r["slide_id"]: r for r in rows}
    print(by["s0_ihc"]["reason"])
    assert by["s0_ihc"]["status"] == "skipped" and "could not be read" in by["s0_ihc"]["reason"]
    assert by["s1_he"]["status"] == "done"
    assert not (tmp_path / "f" / "s0_ihc.h5").exists() and (tmp_path / "f" / "s1_he.h5").exists()


def test_extract_from_clam_coords(slide_dir, tiny_vit, tiny_enc, tmp_path):
    """A CLAM patches file (256 px at level 1, no MPP) is encoded tile by tile at that level."""
    model, enc = tiny_vit[1], tiny_enc
    xy = np.array([[1024, 1024], [1536, 1024], [1024, 1536]])
    cdir = tmp_path / "patches"
    cdir.mkdir()
    with h5py.File(cdir / "s0_ihc.h5", "w") as f:
        d = f.create_dataset("coords", data=xy)
        d.attrs.update(
            {"patch_size": 256, "patch_level": 1, "downsample": np.array([2.0, 2.0]), "name": "s0_ihc"}
        )
    jobs, _ = find_jobs(cdir, tmp_path / "f", str(slide_dir))
    rows = extract_features(jobs, enc, "tiny", batch_size=8, workers=0, accelerator="cpu", progress=False)
    assert rows[0]["status"] == "done"
    d = read_features(tmp_path / "f" / "s0_ihc.h5")
    assert d["attrs"]["coords_source"] == "clam"
    assert np.array_equal(d["adjacency"], [[-1, 1, -1, 2], [0, -1, -1, -1], [-1, -1, 0, -1]])
    with Slide(slide_dir / "s0_ihc.tiff") as s:  # 256 px at level 1 (downsample 2) = 512 level-0 px
        tiles = np.stack([s.read_footprint(c, 512, 64) for c in xy])
    ref = _forward(model, tiles, enc.data_config["mean"], enc.data_config["std"])
    np.testing.assert_allclose(d["features"], ref, atol=1e-5, rtol=0)


def test_real_aperio_tile_and_extract(aperio_svs, tiny_vit, tmp_path):
    ckpt, model = tiny_vit
    tiles = tmp_path / "tiles"
    assert tile_main([str(aperio_svs), "--out", str(tiles), "--magnification", "10", "--no-progress"]) == 0
    out = tmp_path / "feats"
    assert (
        main(
            [
                "--coords",
                str(tiles),
                "--encoder",
                "vit_tiny_patch16_224",
                "--checkpoint",
                str(ckpt),
                "--img-size",
                "64",
                "--out",
                str(out),
                "--workers",
                "0",
                "--accelerator",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    d = read_features(out / "10x" / "cmu_small_region.h5")
    ref, xy = _direct(
        model,
        aperio_svs,
        tiles / "10x" / "coords" / "cmu_small_region.h5",
        tuple(d["attrs"]["mean"]),
        tuple(d["attrs"]["std"]),
    )
    print(f"Aperio: {len(xy)} tiles at 10x encoded, D = {d['features'].shape[1]}")
    np.testing.assert_allclose(d["features"], ref, atol=1e-5, rtol=0)
    assert (d["adjacency"] >= 0).any()
