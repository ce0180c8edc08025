"""Each fault class closed as a class: several members of each, through the functions every runner uses.

Classes: 2 files we did not write / outputs leaving the folder, 3 any file name, 4 reuse only when everything
matches, 5 two runs into one folder, 6 foreign and malformed data files, 7 invalid set-ups. (Class 1, loading
never runs code, is in test_loading_never_runs_code.py; class 8, one-line errors, and the vapt members of
classes 4 and 5 in tests/vapt/test_edge_faults.py.)
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_mgpath_train import _datamodule

from mgpath import folds
from mgpath.io import check_coords, find_feature_file, plain_dataset, read_coords, read_features
from mgpath.pipelines.identity import slide_identity
from mgpath.pipelines.locks import SlideLock, clean_temp, process_start
from mgpath.pipelines.tile import tile_slides
from mgpath.slides.grid import TileParams
from mgpath.slides.jpeg_tiles import check_jpeg_stream
from mgpath.slides.reader import MPPError, check_mpp_override
from mgpath.slides.synthetic import make_synthetic_slide
from vapt.fileio.atomic import atomic_path, confined, is_own_temp, printable
from vapt.training.module import ModelConfigError, NonFiniteLossError, check_loss, check_optimisation
from vapt.training.resume import compare_run_identity, run_identity

ROOT = Path(__file__).resolve().parents[2]
NAMES = [b"Gewebe \xe4.tiff", ("x" * 235 + ".tiff").encode(), b"with space.tiff", "组织 ü.tiff".encode()]


# -- class 2 -------------------------------------------------------------------------------------------
def test_clean_up_removes_only_own_temp_names_of_dead_writers(tmp_path):
    user = [tmp_path / "notes" / "draft.tmp", tmp_path / "notes.txt.tmp", tmp_path / "a.h5.1.2.3.tmp"]
    for p in user:
        p.parent.mkdir(exist_ok=True)
        p.write_text("the user's")
    ours = tmp_path / "x" / "s1.h5.999999999.ab12cd34.tmp"  # a writer pid that cannot exist
    ours.parent.mkdir()
    ours.write_bytes(b"partial")
    assert [p.name for p in clean_temp(tmp_path)] == [ours.name]
    assert all(p.read_text() == "the user's" for p in user)
    assert not is_own_temp("draft.tmp") and is_own_temp("s1.h5.12.ab12cd34.tmp")


def test_paths_built_from_data_stay_in_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink("/", tmp_path / "out" / "link")
    for bad in ("../../escaped.h5", "/etc/passwd", "..", "a/b.h5"):
        with pytest.raises(ValueError, match="not a plain file name"):
            confined(tmp_path / "out", bad)
    with pytest.raises(ValueError, match="outside"):
        confined(tmp_path / "out", "link", "etc")
    assert confined(tmp_path / "out", "Gewebe ä.h5") == tmp_path / "out" / "Gewebe ä.h5"
    with pytest.raises(ValueError, match="'../x'"):
        find_feature_file(tmp_path / "out", "../x")  # a CSV cell never reads outside the features folder


# -- class 3 -------------------------------------------------------------------------------------------
def test_any_file_name_is_tiled_and_summarised(tmp_path):
    base = tmp_path / "base.tiff"
    make_synthetic_slide(base, size=(2048, 1536), mpp=0.5, levels=2, downsample=4)
    src = tmp_path / "in"
    src.mkdir()
    for n in NAMES:
        shutil.copy(os.fsencode(base), os.path.join(os.fsencode(src), n))
    tp = TileParams(magnification=5, tile_size=64, min_tissue=0.1)
    rows = tile_slides([str(src)], tmp_path / "out", tp, progress=False, workers=2)
    assert sorted(r["status"] for r in rows) == ["done"] * 4, [r.get("reason") for r in rows]
    summary = (tmp_path / "out" / "summary.csv").read_text(encoding="utf-8")
    assert "Gewebe \\xe4" in summary and "组织 ü" in summary and "with space" in summary
    json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))
    latin = os.path.join(os.fsencode(tmp_path / "out" / "5x" / "coords"), b"Gewebe \xe4.h5")
    xy, attrs = read_coords(os.fsdecode(latin))
    assert attrs["slide_id"] == os.fsdecode(b"Gewebe \xe4") and len(xy) > 0  # the name round-trips
    with atomic_path(tmp_path / ("y" * 250 + ".h5")) as tmp:  # a temp name fits even for long targets
        assert len(os.path.basename(tmp).encode()) < 255
        open(tmp, "w").close()
    assert printable(os.fsdecode(b"a\xe4")) == "a\\xe4"


# -- class 4 -------------------------------------------------------------------------------------------
def test_identity_changes_when_slide_config_or_data_change(tmp_path):
    slide = tmp_path / "s.tiff"
    slide.write_bytes(b"A" * 5000)
    before = slide_identity(slide)
    slide.write_bytes(b"B" * 5000)  # replaced under the same name, same size
    assert slide_identity(slide) != before
    cfg, labels = tmp_path / "c.yaml", tmp_path / "labels.csv"
    cfg.write_text("model: {lr: 0.1}\n")
    labels.write_text("slide_id,label\na,x\n")
    ident = run_identity(["--config", str(cfg), f"--data.labels_csv={labels}", "--trainer.max_epochs=3"])
    assert compare_run_identity(ident, run_identity(["--config", str(cfg), f"--data.labels_csv={labels}",
                                                     "--trainer.max_epochs=3"])) == ""
    assert "arguments" in compare_run_identity(ident, run_identity(
        ["--config", str(cfg), f"--data.labels_csv={labels}", "--trainer.max_epochs=5"]))
    cfg.write_text("model: {lr: 0.2}\n")
    assert "changed file" in compare_run_identity(ident, run_identity(
        ["--config", str(cfg), f"--data.labels_csv={labels}", "--trainer.max_epochs=3"]))


def _fake_fold(calls):
    def run_fold(config, k, fold_dir, overrides=None, train=True):
        calls.append(k)
        fold_dir.mkdir(parents=True, exist_ok=True)
        row = {"fold": k, "auc": 0.5, "f1": 0.5, "acc": 0.5, "checkpoint": "last",
               "identity": folds.fold_identity(config, k, overrides, train)}
        (fold_dir / "result.json").write_text(json.dumps(row))
        return row
    return run_fold


def test_folds_rerun_with_changed_config_is_stale_and_locked_folds_are_left_alone(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: {max_epochs: 2}\n")
    calls = []
    monkeypatch.setattr(folds, "run_fold", _fake_fold(calls))
    folds.run_folds(str(cfg), [0, 1], str(tmp_path / "runs"))
    folds.run_folds(str(cfg), [0, 1], str(tmp_path / "runs"))
    assert calls == [0, 1]  # the second run reused both
    with pytest.raises(FileExistsError, match="stale: .*pass --overwrite"):
        folds.run_folds(str(cfg), [0, 1], str(tmp_path / "runs"), ["--trainer.max_epochs", "5"])
    cfg.write_text("trainer: {max_epochs: 3}\n")
    with pytest.raises(FileExistsError, match="stale: .*changed file"):
        folds.run_folds(str(cfg), [0], str(tmp_path / "runs"))
    folds.run_folds(str(cfg), [0], str(tmp_path / "runs"), overwrite=True)
    assert calls == [0, 1, 0]
    # class 5: a fold another live run holds is neither deleted nor retrained
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "runs" / ".locks" / "fold_1.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": other.pid, "start": process_start(other.pid)}))
        result = (tmp_path / "runs" / "fold_1" / "result.json").read_text()
        with pytest.raises(FileExistsError, match=r"fold\(s\) \[1\] .* another run"):
            folds.run_folds(str(cfg), [1], str(tmp_path / "runs"), overwrite=True)
        assert (tmp_path / "runs" / "fold_1" / "result.json").read_text() == result and calls == [0, 1, 0]
        # the same pid with another start time is a reused pid: the lock is stale and taken over
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": other.pid, "start": "1"}))
        taker = SlideLock(lock)
        assert taker.acquire() and "another process" in taker.took_over
        taker.release()
    finally:
        other.kill()
        other.wait()


# -- class 6 -------------------------------------------------------------------------------------------
def test_foreign_h5_layouts_are_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(20, dtype="<f4").tobytes())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["features"] = np.ones((5, 4), np.float32)
    cases = {}
    for kind in ("external_link", "soft_link", "external_storage", "virtual"):
        p = tmp_path / f"{kind}.h5"
        with h5py.File(p, "w") as f:
            f["real"] = np.zeros((5, 4), np.float32)
            if kind == "external_link":
                f["features"] = h5py.ExternalLink(str(other), "features")
            elif kind == "soft_link":
                f["features"] = h5py.SoftLink("/real")
            elif kind == "external_storage":
                f.create_dataset("features", shape=(5, 4), dtype="<f4", external=[(str(secret), 0, 80)])
            else:
                layout = h5py.VirtualLayout(shape=(5, 4), dtype="f4")
                layout[:] = h5py.VirtualSource(str(other), "features", shape=(5, 4))
                f.create_virtual_dataset("features", layout)
        cases[kind] = p
    for kind, p in cases.items():
        with pytest.raises(ValueError, match=str(p.name)):
            read_features(p)
    with h5py.File(cases["soft_link"]) as f:
        assert plain_dataset(f, "real", "x") is not None and plain_dataset(f, "absent", "x") is None


def test_malformed_coordinates_get_one_line_each():
    xy = np.array([[0, 0], [256, 0], [512, 256]])
    assert check_coords(xy.astype(np.float64), "c.h5").dtype == np.int64  # whole floats are fine
    for bad, why in ((xy.T, "transposed"), (xy + 0.5, "not whole"), (xy - 300, "negative"),
                     (np.zeros((3, 3)), "expected")):
        with pytest.raises(ValueError, match=why):
            check_coords(bad, "c.h5")


def test_damaged_jpeg_tiles_are_refused():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    check_jpeg_stream(data)
    with pytest.raises(ValueError, match="truncated"):
        check_jpeg_stream(data[: len(data) // 2])
    missed = 0
    for _ in range(40):
        at, n = int(rng.integers(700, len(data) - 400)), int(rng.integers(50, 300))
        try:
            check_jpeg_stream(data[:at] + bytes(rng.integers(0, 256, n, dtype=np.uint8)) + data[at + n:])
            missed += 1
        except ValueError:
            pass
    assert missed == 0


# -- class 7 -------------------------------------------------------------------------------------------
def test_invalid_splits_are_refused_unless_allowed(tmp_path):
    dm = _datamodule(tmp_path, n_per_class=8)
    split = tmp_path / "splits" / "splits_0.csv"
    good = split.read_text()
    lines = good.splitlines()
    first_train = lines[1].split(",")[0]
    split.write_text(good.rstrip("\n") + f"\n,,{first_train}\n")  # a train slide also in test
    with pytest.raises(ValueError, match=f"{first_train}.*both train and test"):
        dm.setup("fit")
    split.write_text("train,val,test\nclass_a_00,class_b_03,class_a_03\nclass_a_01,,\n")
    with pytest.raises(ValueError, match=r"no slide of class\(es\) \['class_b'\]"):
        dm.setup("fit")
    dm.allow_invalid_split = True
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        dm.setup("fit")
    assert any("allow_invalid_split" in str(x.message) for x in w)


def test_invalid_optimisation_values_loss_and_mpp_are_refused():
    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": -1e-4}, {"lr": "x"}):
        with pytest.raises(ModelConfigError, match=list(bad)[0]):
            check_optimisation(**bad)
    check_optimisation(lr=0.1, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match="epoch 3 .step 40"):
        check_loss(torch.tensor(float("nan")), 3, 40)
    check_loss(torch.tensor(0.5), 3, 40)
    with pytest.raises(MPPError, match="looks like a magnification"):
        check_mpp_override(40)
    with pytest.raises(MPPError, match="row 3"):
        check_mpp_override("n/a", "--mpp-csv m.csv row 3")
    assert check_mpp_override("0.25") == 0.25


# class 8 (one-line errors of vapt and mgpath) and class 5 for vapt: tests/vapt/test_edge_faults.py
