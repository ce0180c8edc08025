"""Long runs never give silently wrong results: cache identity, random weights, locks, temp files, disk full,
duplicates, killed workers, and one clear line per bad input (tile and extract)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest
import timm
import torch

from mgpath.cli import main as mgpath_main
from mgpath.commands.extract import main as extract_main
from mgpath.commands.tile import main as tile_main
from mgpath.io import read_features, write_coords
from mgpath.pipelines import extract as extract_pipeline
from mgpath.pipelines.jobs import find_jobs
from mgpath.pipelines.locks import SlideLock, clean_temp
from vapt.fileio.atomic import atomic_path, temp_owner_pid

ENC = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def slides(slide_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_slides")
    for p in slide_dir.iterdir():
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def tiled(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust_tiles")
    assert tile_main([str(slides), "--out", str(out), "--magnification", "2.5", "--tile-size", "96",
                      "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust_ckpt")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = timm.create_model(ENC, pretrained=False, num_classes=0, img_size=64)
        torch.save(m.state_dict(), d / f"w{seed}.pth")
        paths.append(d / f"w{seed}.pth")
    return paths


def _extract(tiled, slides, out, *extra):
    return extract_main(["--coords", str(tiled), "--slides", str(slides), "--encoder", ENC, "--img-size", "64",
                         "--out", str(out), "--batch-size", "32", "--workers", "0", "--accelerator", "cpu",
                         "--no-progress", *extra])


def _rows(out):
    return {r["slide_id"]: r for r in json.loads((out / "features_summary.json").read_text())}


def _feats(out):
    return {p.name: read_features(p)["features"] for p in sorted((out / "2.5x").glob("*.h5"))}


def test_extract_cache_is_keyed_by_everything_that_determines_the_features(tiled, slides, two_checkpoints,
                                                                          tmp_path):
    a, b = two_checkpoints
    out = tmp_path / "f"
    assert _extract(tiled, slides, out, "--checkpoint", str(a)) == 0
    first = _feats(out)
    assert _extract(tiled, slides, out, "--checkpoint", str(a)) == 0
    assert {r["status"] for r in _rows(out).values()} == {"cached"}
    # another weights file: stale, nothing overwritten, exit 1
    assert _extract(tiled, slides, out, "--checkpoint", str(b)) == 1
    rows = _rows(out)
    assert {r["status"] for r in rows.values()} == {"skipped"}
    assert all(r["reason"].startswith("stale:") and "weights=sha256:" in r["reason"] and "--overwrite" in r["reason"]
               for r in rows.values())
    assert all(np.array_equal(v, first[k]) for k, v in _feats(out).items())
    # another input size or normalisation-changing setting: stale too
    assert _extract(tiled, slides, out, "--checkpoint", str(a), "--img-size", "32") == 1
    assert all("input_size=[64, 64]" in r["reason"] for r in _rows(out).values())
    # --overwrite redoes it with the new weights
    assert _extract(tiled, slides, out, "--checkpoint", str(b), "--overwrite") == 0
    new = _feats(out)
    assert all(not np.allclose(new[k], first[k]) for k in first)
    ident = json.loads(h5py.File(out / "2.5x" / "s0_ihc.h5")["/"].attrs["identity"])
    assert ident["weights"].startswith("sha256:") and ident["encoder"] == ENC and ident["precision"] == "32-true"
    assert ident["input_size"] == [64, 64] and len(ident["coords_sha256"]) == 64


def test_changed_coordinates_make_features_stale(tiled, slides, two_checkpoints, tmp_path):
    tiles = tmp_path / "tiles"
    shutil.copytree(tiled, tiles)
    out = tmp_path / "f"
    assert _extract(tiles, slides, out, "--checkpoint", str(two_checkpoints[0])) == 0
    coords_file = tiles / "2.5x" / "coords" / "s1_he.h5"
    with h5py.File(coords_file) as f:
        xy, attrs = f["coords"][()], {k: v for k, v in f.attrs.items()}
    write_coords(coords_file, xy[::-1].copy(), attrs)  # same tiles, other order
    assert _extract(tiles, slides, out, "--checkpoint", str(two_checkpoints[0])) == 1
    rows = _rows(out)
    assert rows["s0_ihc"]["status"] == "cached"
    assert rows["s1_he"]["status"] == "skipped" and "coords_sha256" in rows["s1_he"]["reason"]


def test_random_weights_are_announced_seeded_and_part_of_the_identity(tiled, slides, tmp_path, capfd):
    assert _extract(tiled, slides, tmp_path / "r1") == 0
    err = capfd.readouterr().err
    assert "RANDOM weights" in err and "seed 0" in err
    assert _extract(tiled, slides, tmp_path / "r2") == 0
    capfd.readouterr()
    one, two = _feats(tmp_path / "r1"), _feats(tmp_path / "r2")
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    # a resumed run with another seed never mixes two random encoders in one folder
    (tmp_path / "r1" / "2.5x" / "s1_he.h5").unlink()
    assert _extract(tiled, slides, tmp_path / "r1", "--random-seed", "1") == 1
    rows = _rows(tmp_path / "r1")
    assert rows["s1_he"]["status"] == "done"
    assert rows["s0_ihc"]["status"] == "skipped" and "random-init(seed=0)" in rows["s0_ihc"]["reason"]
    assert "RANDOM weights" in capfd.readouterr().err


def test_tile_outputs_are_stale_when_tissue_settings_or_the_slide_change(slides, tmp_path):
    sl = tmp_path / "slides"
    sl.mkdir()
    shutil.copy(slides / "s0_ihc.tiff", sl / "s0_ihc.tiff")
    out = tmp_path / "t"
    args = [str(sl), "--out", str(out), "--magnification", "2.5", "--tile-size", "96", "--no-progress"]
    assert tile_main(args) == 0
    assert tile_main(args + ["--min-saturation", "40"]) == 1
    row = json.loads((out / "summary.json").read_text())["slides"][0]
    assert row["reason"].startswith("stale:") and "min_saturation" in row["reason"]
    os.utime(sl / "s0_ihc.tiff", (time.time() + 100, time.time() + 100))  # the slide file was replaced
    assert tile_main(args) == 1
    assert "slide_mtime" in json.loads((out / "summary.json").read_text())["slides"][0]["reason"]
    assert tile_main(args + ["--overwrite"]) == 0
    assert tile_main(args) == 0
    assert json.loads((out / "summary.json").read_text())["counts"]["cached"] == 1


def _live_pid():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_locks_of_live_runs_are_respected_and_stale_ones_taken_over(slides, tiled, two_checkpoints, tmp_path):
    import socket

    other = _live_pid()
    try:
        out = tmp_path / "t"
        (out / ".locks").mkdir(parents=True)
        host = socket.gethostname()
        (out / ".locks" / "s0_ihc.lock").write_text(json.dumps({"host": host, "pid": other.pid}))
        (out / ".locks" / "s1_he.lock").write_text(json.dumps({"host": host, "pid": _dead_pid()}))
        assert tile_main([str(slides), "--out", str(out), "--magnification", "2.5", "--tile-size", "96",
                          "--no-progress"]) == 1
        rows = {r["slide_id"]: r for r in json.loads((out / "summary.json").read_text())["slides"]}
        assert rows["s0_ihc"]["status"] == "skipped" and f"pid {other.pid}" in rows["s0_ihc"]["reason"]
        assert rows["s1_he"]["status"] == "done"
        assert not (out / ".locks" / "s1_he.lock").exists()  # released after the work
        # extraction: a slide another run is writing is left to it
        f = tmp_path / "f"
        (f / "2.5x").mkdir(parents=True)
        (f / "2.5x" / "s1_he.h5.lock").write_text(json.dumps({"host": host, "pid": other.pid}))
        assert _extract(tiled, slides, f, "--checkpoint", str(two_checkpoints[0])) == 1
        r = _rows(f)
        assert r["s0_ihc"]["status"] == "done" and r["s1_he"]["status"] == "skipped"
        assert r["s1_he"]["reason"].startswith("busy:") and not (f / "2.5x" / "s1_he.h5").exists()
    finally:
        other.kill()
        other.wait()


def test_temp_files_of_live_writers_survive_clean_up(tmp_path):
    other = _live_pid()
    try:
        live = tmp_path / f"a.h5.{other.pid}.k3j2.tmp"
        dead = tmp_path / f"b.h5.{_dead_pid()}.x9y8.tmp"
        legacy = tmp_path / "c.h5.x1y2.tmp"
        for p in (live, dead, legacy):
            p.write_bytes(b"partial")
        assert temp_owner_pid(live.name) == other.pid and temp_owner_pid(legacy.name) is None
        assert sorted(p.name for p in clean_temp(tmp_path)) == sorted([dead.name, legacy.name])
        assert live.exists()
    finally:
        other.kill()
        other.wait()
    with atomic_path(tmp_path / "d.txt") as tmp:  # our own temp names carry our pid
        assert temp_owner_pid(os.path.basename(tmp)) == os.getpid()
        open(tmp, "w").close()
    lock = SlideLock(tmp_path / "x.lock")
    assert lock.acquire() and SlideLock(tmp_path / "x.lock").acquire()  # same process: re-entrant
    lock.release()
    assert not (tmp_path / "x.lock").exists()


def test_full_disk_reports_the_slide_and_keeps_going(tiled, slides, two_checkpoints, tmp_path, monkeypatch):
    real = extract_pipeline.write_features

    def full(path, *a, **k):
        if "s0_ihc" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(extract_pipeline, "write_features", full)
    out = tmp_path / "f"
    assert _extract(tiled, slides, out, "--checkpoint", str(two_checkpoints[0])) == 1
    rows = _rows(out)  # the summary is always written
    assert rows["s1_he"]["status"] == "done"
    assert rows["s0_ihc"]["status"] == "skipped" and "No space left on device" in rows["s0_ihc"]["reason"]
    monkeypatch.setattr(extract_pipeline, "write_features", real)
    assert _extract(tiled, slides, out, "--checkpoint", str(two_checkpoints[0])) == 0  # resumes the lost one
    assert {r["status"] for r in _rows(out).values()} == {"cached", "done"}


def test_interrupted_extraction_resumes_to_the_uninterrupted_result(tiled, slides, two_checkpoints, tmp_path):
    import lightning.pytorch as pl

    ckpt = str(two_checkpoints[0])
    assert _extract(tiled, slides, tmp_path / "fresh", "--checkpoint", ckpt) == 0

    class Die(pl.Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if (tmp_path / "out" / "2.5x" / "s0_ihc.h5").exists():
                raise KeyboardInterrupt("killed")

    from vapt.backbones import build_backbone as build_encoder

    jobs, _ = find_jobs(tiled, tmp_path / "out", str(slides))
    enc = build_encoder(ENC, checkpoint=ckpt, img_size=64)
    with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into SystemExit(1) after its graceful shutdown
        extract_pipeline.extract_features(jobs, enc, ENC, checkpoint=ckpt, batch_size=8, workers=0, accelerator="cpu",
                                          progress=False, callbacks=[Die()])
    assert not (tmp_path / "out" / "2.5x" / "s1_he.h5").exists()
    assert not list((tmp_path / "out").rglob("*.lock"))  # released on the way out
    # as kill -9 would leave: a lock and a temp file of a dead process
    dead = _dead_pid()
    (tmp_path / "out" / "2.5x" / "s1_he.h5.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead}))
    (tmp_path / "out" / "2.5x" / f"s1_he.h5.{dead}.ab12.tmp").write_bytes(b"torn")
    assert _extract(tiled, slides, tmp_path / "out", "--checkpoint", ckpt) == 0
    assert [r["status"] for r in sorted(_rows(tmp_path / "out").values(), key=lambda r: r["slide_id"])] == [
        "cached", "done"]
    fresh, resumed = _feats(tmp_path / "fresh"), _feats(tmp_path / "out")
    assert fresh.keys() == resumed.keys() and all(np.array_equal(fresh[k], resumed[k]) for k in fresh)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_duplicate_slide_ids_and_duplicate_tiles_are_refused(tiled, slides, tmp_path):
    cdir = tmp_path / "coords"
    shutil.copytree(tiled / "2.5x" / "coords", cdir)
    shutil.copy(cdir / "s0_ihc.h5", cdir / "s0_ihc_patches.h5")  # TRIDENT naming: same slide id
    with h5py.File(cdir / "s1_he.h5") as f:
        xy, attrs = f["coords"][()], {k: v for k, v in f.attrs.items()}
    write_coords(cdir / "s1_he.h5", np.concatenate([xy, xy[2:3]]), attrs)
    jobs, problems = find_jobs(cdir, tmp_path / "f", str(slides))
    assert [j.slide_id for j in jobs] == ["s0_ihc"]
    why = {p["path"].split("/")[-1]: p["reason"] for p in problems}
    assert "duplicate slide id 's0_ihc'" in why["s0_ihc_patches.h5"] and "s0_ihc.h5" in why["s0_ihc_patches.h5"]
    assert "twice (rows 2 and" in why["s1_he.h5"]


def test_killing_the_tile_parent_ends_its_workers(slides, tmp_path):
    marker = uuid.uuid4().hex
    env = {**os.environ, "MGPATH_TEST_MARKER": marker}
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):
        shutil.copy(slides / "s1_he.tiff", many / f"s{i}.tiff")
    proc = subprocess.Popen([sys.executable, "-m", "mgpath.cli", "tile", str(many), "--out", str(tmp_path / "o"),
                             "--magnification", "20", "--workers", "2", "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def marked():
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != proc.pid:
                try:
                    with open(f"/proc/{d}/environ", "rb") as f:
                        if marker.encode() in f.read():
                            pids.append(int(d))
                except OSError:
                    pass
        return pids

    deadline = time.time() + 60
    while len(marked()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and len(marked()) >= 2, "the workers did not start"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while marked() and time.time() < deadline:
        time.sleep(0.2)
    assert marked() == []


def test_any_failure_is_one_line_and_debug_shows_the_traceback(slides, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"garbage")
    argv = ["heatmap", "--ckpt_path", str(bad), "--slide", str(slides / "s0_ihc.tiff"), "--out", str(tmp_path / "o.png")]
    assert mgpath_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgpath heatmap: ") and "--debug" in err[0]
    with pytest.raises(Exception):  # noqa: B017 - whatever it is, --debug lets it through with its traceback
        mgpath_main(argv + ["--debug"])
    monkeypatch.delenv("MGPATH_DEBUG", raising=False)
