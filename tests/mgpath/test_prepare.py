"""`mgpath prepare`: tile then extract in one job folder, the same features as the two single-step commands."""
from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np

from mgpath.cli import main as mgpath_main

TILE = ["--magnification", "2.5", "--tile_size", "64", "--no_progress"]
ENCODE = ["--encoder", "vit_tiny_patch16_224", "--encoder_kwargs", '{"depth": 1}', "--img_size", "32",
          "--batch_size", "16", "--workers", "0", "--accelerator", "cpu"]


def _datasets(path) -> dict[str, bytes]:
    with h5py.File(path, "r") as f:
        return {name: np.asarray(f[name]).tobytes() for name in f if isinstance(f[name], h5py.Dataset)}


def test_prepare_equals_tile_then_extract_and_resumes(synthetic, tmp_path, capsys):
    slide = synthetic("p0.tiff", size=(2048, 1536), mpp=0.5, levels=2, downsample=2, tissue_class=0)
    folder = tmp_path / "slides"  # its own folder: the synthetic fixture's folder holds other tests' slides
    folder.mkdir()
    shutil.copy2(slide.path, folder / "p0.tiff")
    steps = tmp_path / "steps"
    assert mgpath_main(["tile", str(folder), "--out", str(steps / "tiles"), *TILE]) == 0
    assert mgpath_main(["extract", "--coords", str(steps / "tiles"), "--out", str(steps / "features"), *ENCODE,
                        "--no_progress"]) == 0
    job = tmp_path / "job"
    assert mgpath_main(["prepare", str(folder), "--out", str(job), *TILE, *ENCODE]) == 0
    expected = sorted(p.relative_to(steps) for p in (steps / "features").rglob("*.h5"))
    got = sorted(p.relative_to(job) for p in (job / "features").rglob("*.h5"))
    assert expected == got and len(got) == 1
    for rel in got:
        a, b = _datasets(steps / rel), _datasets(job / rel)
        assert set(a) >= {"features", "coords"} and a == b  # byte for byte
    coords = sorted(p.relative_to(job) for p in (job / "tiles").rglob("coords/*.h5"))
    assert coords == sorted(p.relative_to(steps) for p in (steps / "tiles").rglob("coords/*.h5"))
    with open(job / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["status"]) for r in rows] == [("tile", "done"), ("features", "done")]
    capsys.readouterr()
    assert mgpath_main(["prepare", str(folder), "--out", str(job), *TILE, *ENCODE]) == 0  # resumable
    assert "0 done, 2 cached" in capsys.readouterr().out
    assert _datasets(job / got[0]) == _datasets(steps / got[0])
