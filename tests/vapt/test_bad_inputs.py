"""The vapt bad-input matrix through the command lines, each case in its own process: it exits 2 (bad input),
1 (items skipped) or 0 (handled), prints one line naming the file and no traceback, and leaves the outputs
of an earlier good run intact. ``--debug`` brings the traceback back.

The matrix processes come from a fork server that has imported vapt once and run ``vapt.cli.main`` (what
``python -m vapt.cli`` runs), so they skip the ~5 s of imports each; the ``--debug`` test starts a real
``python -m vapt.cli``."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vapt.data.synthetic import write_vtab_tree

REPO = Path(__file__).resolve().parents[2]
TINY = json.dumps({"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1})


def fit_args(root: Path, runs: Path, *extra: str, sub: str = "fit") -> list[str]:
    return [sub, "--config", str(REPO / "configs/vtab/vapt/dtd.yaml"), f"--data.root={root}",
            "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}", "--data.img_size=16",
            "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={runs}", *extra]


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m vapt.cli ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "vapt.cli", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                               **(env or {})})


def _child(args: list[str], cwd: Path, out: Path, err: Path, env: dict) -> None:
    os.chdir(cwd)
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
    code = 1
    try:
        from vapt.cli import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 (the child reports any failure as the interpreter would)
        traceback.print_exc()  # what the interpreter prints for an uncaught exception (and its exit code 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _forkserver():
    """Children are forked from a server that has only imported vapt: quick to start, and safe (a fork of this
    process, whose torch thread pools have run, can hang)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vapt.cli", "vapt.training.lightning_cli", "vapt.training.tune"])
    return ctx


def start_cli(args: list[str], cwd: Path, env: dict | None = None):
    """Start ``vapt ARGS`` in its own process; `finish` waits for it."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    proc = _forkserver().Process(target=_child, args=(args, cwd, out, err, env or {}))
    proc.start()
    return proc, args, out, err


def finish(started) -> subprocess.CompletedProcess:
    proc, args, out, err = started
    proc.join(300)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"vapt {' '.join(args[:1])} did not finish in 300 s: {err.read_text()[-2000:]}")
    return subprocess.CompletedProcess(args, proc.exitcode, out.read_text(), err.read_text())


def run_forked(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``vapt ARGS`` in its own process (its own exit code, stdout and stderr)."""
    return finish(start_cli(args, cwd, env))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A VTAB-1k dtd tree and the runs folder of one good `vapt fit` on it."""
    base = tmp_path_factory.mktemp("bad_inputs")
    root = write_vtab_tree(base / "vtab-1k", ["dtd"], sizes={"train800": 4, "val200": 2, "test": 2}, img_size=32)
    proc = run_forked(fit_args(root, base / "runs"), base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base, root


@dataclass
class Case:
    name: str
    exit_code: int
    names: str  # the path the message must name (relative to the case folder), or a fixed phrase
    message: str  # a phrase of the message
    args: list[str] = field(default_factory=list)
    sub: str = "fit"


def noise_jpeg(path: Path, size: int = 64) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def prepare(case: Case, folder: Path) -> None:
    """Damage the copy of the data / runs in ``folder`` the way the case says."""
    dtd = folder / "vtab-1k" / "dtd"
    ckpt = next((folder / "runs").rglob("last.ckpt"))
    if case.name == "corrupt --ckpt_path":
        (folder / "bad.ckpt").write_bytes(ckpt.read_bytes()[:300])
    elif case.name == "--ckpt_path not a checkpoint":
        torch.save({"weights": torch.ones(2)}, folder / "plain.ckpt")
    elif case.name == "truncated newest checkpoint, --ckpt_path last":
        (ckpt.parent / "epoch=1-step=8.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    elif case.name == "duplicate split line":
        lines = (dtd / "train800val200.txt").read_text().splitlines()
        (dtd / "train800val200.txt").write_text("\n".join([*lines, lines[0]]) + "\n")
    elif case.name == "split entry outside the root":
        with open(dtd / "train800val200.txt", "a") as fh:
            fh.write("../../../secret.jpg 0\n")
    elif case.name.startswith("truncated JPEG"):
        jpg = dtd / "images" / "train800val200" / "000001.jpg"
        noise_jpeg(jpg)
        jpg.write_bytes(jpg.read_bytes()[:-400])
    elif case.name == "PNG damaged inside, found mid-epoch by a worker":
        png = dtd / "images" / "train800val200" / "000001.png"
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png)
        data = png.read_bytes()
        png.write_bytes(data[: data.index(b"IDAT") + 40] + data[-12:])  # end marker kept: passes the cheap check
        text = (dtd / "train800val200.txt").read_text().replace("000001.jpg", "000001.png")
        (dtd / "train800val200.txt").write_text(text)
    elif case.name == "missing data root":
        shutil.rmtree(folder / "vtab-1k")


CASES = [
    Case("corrupt --ckpt_path", 2, "bad.ckpt", "cannot be loaded", ["--ckpt_path={f}/bad.ckpt"]),
    Case("--ckpt_path not a checkpoint", 2, "plain.ckpt", "is not a Lightning checkpoint",
         ["--ckpt_path={f}/plain.ckpt"], sub="test"),
    Case("--ckpt_path missing", 2, "nowhere.ckpt", "does not exist", ["--ckpt_path={f}/nowhere.ckpt"], sub="validate"),
    Case("truncated newest checkpoint, --ckpt_path last", 0, "runs/dtd/vapt/version_0/checkpoints/epoch=1-step=8.ckpt",
         "skipping",
         ["--ckpt_path=last", "--trainer.max_epochs=2"]),
    Case("duplicate split line", 2, "vtab-1k/dtd/train800val200.txt:7", "is listed again (first at line 1)"),
    Case("split entry outside the root", 2, "vtab-1k/dtd/train800val200.txt:7", "resolves outside the data root"),
    Case("truncated JPEG, stop", 2, "vtab-1k/dtd/images/train800val200/000001.jpg", "truncated JPEG"),
    Case("truncated JPEG, skip", 1, "vtab-1k/dtd/images/train800val200/000001.jpg", "skipped 1 unreadable image",
         ["--data.on_bad_image=skip"]),
    Case("PNG damaged inside, found mid-epoch by a worker", 2, "vtab-1k/dtd/images/train800val200/000001.png",
         "cannot decode image", ["--data.num_workers=2"]),
    Case("missing data root", 2, "vtab-1k", "does not exist"),
]


def start_case(case: Case, good: tuple[Path, Path], tmp: Path):
    base, root = good
    folder = tmp / case.name.replace(" ", "_").replace(",", "").replace("/", "")
    shutil.copytree(root, folder / "vtab-1k")
    shutil.copytree(base / "runs", folder / "runs")
    prepare(case, folder)
    extra = [a.replace("{f}", str(folder)) for a in case.args]
    return start_cli(fit_args(folder / "vtab-1k", folder / "runs", *extra, sub=case.sub), folder), folder


def test_vapt_bad_input_matrix(good, tmp_path):
    before = digest(good[0] / "runs")
    results = []
    for i in range(0, len(CASES), 3):  # three at a time
        started = [(case, *start_case(case, good, tmp_path)) for case in CASES[i:i + 3]]
        results += [(case, finish(proc), folder) for case, proc, folder in started]
    table = []
    for case, proc, folder in results:
        err = proc.stderr.strip().splitlines()
        named = str(folder / case.names) if "/" in case.names or "." in case.names else case.names
        ours = [line for line in err if line.startswith("vapt ")]
        table.append(f"| {case.name} | {proc.returncode} | {(ours or ['-'])[-1][:160]} |")
        assert proc.returncode == case.exit_code, (case.name, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (case.name, proc.stderr[-3000:])
        if case.exit_code:
            assert len(ours) == 1 and ours[0] == err[-1], (case.name, err[-5:])  # one line, the last one
            assert named in ours[0] and case.message in ours[0], (case.name, ours[0])
        else:
            assert named in proc.stdout and case.message in proc.stdout, (case.name, proc.stdout[-2000:])
        after = digest(folder / "runs")
        assert all(after.get(k) == v for k, v in before.items()), case.name  # earlier good outputs intact
    print("\n".join(table))


def test_debug_shows_the_traceback(good, tmp_path):
    _, root = good
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    args = fit_args(root, tmp_path / "runs", f"--ckpt_path={tmp_path / 'bad.ckpt'}")
    proc = run([*args, "--debug"], tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
    proc = run_forked(args, tmp_path, env={"VAPT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_tune_user_errors_are_one_line(tmp_path):
    tune = ["tune", "--config", str(REPO / "configs/vtab/vapt/dtd.yaml"),
            f"--data.root={tmp_path / 'nowhere'}", "--model.checkpoint=null", f"--model.backbone_kwargs={TINY}",
            "--data.img_size=16", "--grid", "lr=1;wd=0", "--seeds", "1", "--out", str(tmp_path / "tune")]
    proc = run_forked(tune, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"vapt tune: DataError: VTAB-1k root {tmp_path / 'nowhere'}")
