"""The built wheel carries its configs and data: install it into a throw-away venv and use it from a folder
outside the checkout (`vapt report` with published columns, `vapt fit --config demo`, `configs --list`)."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools.config.pyprojecttoml import load_file

from vapt.fileio.resources import config_names, shipped_dir

REPO = Path(__file__).resolve().parents[2]
SHIPPED = "_shipped/"


def _package_data_globs() -> list[str]:
    """The ``vapt`` package-data patterns of pyproject.toml, relative to the repository (``data/*/...``)."""
    pats = load_file(REPO / "pyproject.toml")["tool"]["setuptools"]["package-data"]["vapt"]
    return [p.removeprefix(SHIPPED) for p in pats if p.startswith(SHIPPED)]


def _shipped_files() -> set[str]:
    return {p.relative_to(REPO).as_posix() for g in _package_data_globs() for p in REPO.glob(g) if p.is_file()}


def _copy_source(dst: Path) -> None:
    """The files a wheel is built from: the packages (with their links), the metadata and the shipped data."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("vapt", "mgpath"):
        shutil.copytree(REPO / name, dst / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for rel in _shipped_files():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst / rel)


def test_checkout_reads_the_repository_folders():
    """One copy: in a checkout the package's shipped folders are the repository's configs/ and data/."""
    assert shipped_dir("configs") == (REPO / "configs").resolve()
    assert shipped_dir("data") == (REPO / "data").resolve()
    assert len(config_names()) == len(list((REPO / "configs").rglob("*.yaml"))) > 100


def test_wheel_installs_with_its_data_and_runs_outside_the_checkout(tmp_path):
    src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    _copy_source(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True)
    wheel = next(dist.glob("vapt_mgpath-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py, bindir = venv / "bin" / "python", venv / "bin"
    # The throw-away venv sees this environment's dependencies (a path line, so the checkout's editable-install
    # hook is not run there) whether the suite runs from a venv or a system Python; the package comes from the wheel.
    new_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (new_site / "_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip must not see the checkout's egg-info
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   cwd=tmp_path, env=clean)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VAPT_LOG_VERSION")}
    env["MPLBACKEND"] = "Agg"
    work.mkdir()
    (work / "runs").mkdir()

    def start(*args) -> subprocess.Popen:
        return subprocess.Popen([str(a) for a in args], cwd=work, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finish(proc: subprocess.Popen) -> str:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{proc.args}:\n{out[-4000:]}"
        return out

    def run(*args) -> str:
        return finish(start(*args))

    # the slow one first, in the background (the checks below do not need it)
    fit = start(bindir / "vapt", "fit", "--config", "demo", "--trainer.fast_dev_run", "true",
                "--data.init_args.root", "demo_data", "--data.init_args.train_size", "64",
                "--data.init_args.val_size", "32", "--data.init_args.test_size", "32")

    site = Path(run(py, "-c", "import vapt.fileio.resources as r; print(r.shipped_dir('data'))").strip())
    assert venv in site.parents  # the installed copy, not the checkout
    # no drift: the installed files are the repository's files, one for one
    installed = {p.relative_to(site.parent).as_posix() for p in site.parent.rglob("*") if p.is_file()}
    assert installed == _shipped_files()
    assert all(filecmp.cmp(site.parent / rel, REPO / rel, shallow=False) for rel in installed)

    listed = run(bindir / "vapt", "configs", "--list").split()
    assert "vtab/vapt/cifar100" in listed and "demo" in listed and "wsi/demo_tiny" not in listed
    assert "wsi/tcga_nsclc_16shot" in run(bindir / "mgpath", "configs", "--list").split()
    cifar = REPO / "configs" / "vtab" / "vapt" / "cifar100.yaml"
    assert run(bindir / "vapt", "configs", "vtab/vapt/cifar100") == cifar.read_text()  # by name, from the wheel
    assert venv in Path(run(bindir / "vapt", "configs", "vtab/vapt/cifar100", "--path").strip()).parents

    runs = work / "runs" / "patch_camelyon" / "vapt"
    runs.mkdir(parents=True)  # beside the fit's runs/demo/... (report reads only summary.json files)
    runs.joinpath("summary.json").write_text(json.dumps({
        "task": "patch_camelyon", "method": "vapt", "family": "vtab", "best_lr": 5.0, "best_wd": 0.0,
        "seeds": [42, 44], "test_acc": [0.8, 0.84], "test_acc_mean": 0.82, "test_acc_std": 0.02}))
    md = run(bindir / "vapt", "report", "runs")
    cam = next(line for line in md.splitlines() if line.startswith("| patch_camelyon"))
    assert "| VPT-deep paper |" in md and "| 81.80 |" in cam and "82.00 ± 2.00" in cam

    out = finish(fit)
    assert "test/acc = " in out and "Tip:" not in out
