#!/usr/bin/env python3
"""Benchmark: tiling seconds per slide, ours against CLAM, hs2p, LazySlide and TRIDENT; optionally feature
extraction throughput against the encoder alone.

    python3 scripts/bench/tiling.py [--size 50000] [--rounds 5] [--clam-dir DIR] [--trident-dir DIR]
        [--peer-path DIR] [--slide PATH] [--skip-extract] [--device cpu|cuda] [--max-tiles 128]

Generates a ``size x size`` 0.25 um/px pyramidal JPEG TIFF (levels x4, 256-px tiles) once (cached in
``--cache``), or takes ``--slide``. Then, round by round (``--rounds``, tools in a rotating order so none
always runs first), each tool tiles the slide at 10x (1 um/px), 256-px tiles, in a fresh Python process:

- ``ours``: :func:`mgpath.pipelines.tile.tile_slide` (segmentation, tile grid, tissue fraction >= 0.5,
  coordinates h5, GeoJSON, 2048-px preview);
- ``clam`` (``--clam-dir``, a checkout of mahmoodlab/CLAM): its ``seg_and_patch`` as ``create_patches_fp.py
  --seg --patch --patch_level 1 --patch_size 256`` runs it (defaults, mask picture saved, no stitching);
- ``hs2p`` (PyPI ``hs2p``): its tiling of one slide at 1 um/px, 256 px, min tissue 0.5;
- ``lazyslide`` (PyPI ``lazyslide``): ``zs.pp.find_tissues`` + ``zs.pp.tile_tissues(256, mpp=1.0)``;
- ``trident`` (``--trident-dir``, a checkout of mahmoodlab/TRIDENT, needs geopandas): ``OpenSlideWSI``,
  ``segment_tissue`` with its CPU ``otsu`` segmenter, ``extract_tissue_coords(10, 256,
  min_tissue_proportion=0.5)``.

Each process tiles the slide twice (into two folders): ``work_s`` is the second run, the work per slide of a
cohort tiled in one process (slide opened to outputs written, imports done); ``first_work_s`` the first run
(lazy imports included); ``command_s`` the time from launching the process to the first run's outputs
written (interpreter start, imports, work). The slow peers (LazySlide, TRIDENT) tile once per process (their
``work_s`` is that first run) and only in the first ``--rounds-slow`` rounds. A peer that is not installed is
listed under ``missing`` with the reason. ``--peer-path`` folders are put on the peers' ``PYTHONPATH`` (e.g.
a ``pip install --target`` folder). ``--baseline-src DIR`` adds ``ours_baseline``: the same work with the
``mgpath`` package found in DIR (e.g. an older checkout). Prints ONE JSON line: medians over rounds, every
round, tile counts, and ``ours_work_over_fastest_of_clam_hs2p`` (median over rounds of the per-round ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = ("clam", "hs2p", "lazyslide", "trident")
#: peers that take minutes per slide here: one run per process (``work_s`` is then the first run)
SLOW = ("lazyslide", "trident")


# -- one tool, one slide, in this (fresh) process ------------------------------------------------------------
def _run_ours(slide: str, out: str, _a) -> int:
    from mgpath.pipelines.tile import tile_slide
    from mgpath.slides.grid import TileParams

    t = time.perf_counter()
    row = tile_slide(slide, out, TileParams(tile_size=256, magnification=10, min_tissue=0.5), overwrite=True)
    _report(t, row.get("tiles_10x"), row["status"] == "done", row.get("reason"))
    return 0


def _run_clam(slide: str, out: str, a) -> int:
    import contextlib
    import io

    sys.path.insert(0, a.clam_dir)
    sys.argv = ["create_patches_fp.py"]
    import create_patches_fp as cp  # noqa: E402 -- its module level only defines the parser

    src = Path(out) / "source"
    src.mkdir(parents=True, exist_ok=True)
    link = src / Path(slide).name
    if not link.exists():
        link.symlink_to(Path(slide).resolve())
    dirs = {k: str(Path(out) / k) for k in ("patches", "masks", "stitches")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    params = dict(
        seg_params={"seg_level": -1, "sthresh": 8, "mthresh": 7, "close": 4, "use_otsu": False,
                    "keep_ids": "none", "exclude_ids": "none"},
        filter_params={"a_t": 100, "a_h": 16, "max_n_holes": 8},
        vis_params={"vis_level": -1, "line_thickness": 250},
        patch_params={"use_padding": True, "contour_fn": "four_pt"},
    )
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cp.seg_and_patch(str(src), out, dirs["patches"], dirs["masks"], dirs["stitches"], patch_size=256,
                         step_size=256, patch_level=1, seg=True, patch=True, stitch=False, auto_skip=False,
                         **params)
    h5 = Path(dirs["patches"]) / (Path(slide).stem + ".h5")
    _report(t, _h5_rows(h5), h5.exists(), "" if h5.exists() else "no h5 written")
    return 0


def _run_hs2p(slide: str, out: str, _a) -> int:
    from hs2p import SegmentationConfig, SlideSpec, TilingConfig, save_tiling_result, tile_slide
    from hs2p import write_tiling_preview
    from hs2p.configs.models import DEFAULT_MASK_SAMPLING, MaskSamplingConfig

    masks = MaskSamplingConfig(pixel_mapping=dict(DEFAULT_MASK_SAMPLING.pixel_mapping),
                               colors=dict(DEFAULT_MASK_SAMPLING.colors or {}), min_coverage={"tissue": 0.5})
    t = time.perf_counter()
    result = tile_slide(
        SlideSpec(sample_id=Path(slide).stem, image_path=Path(slide)),
        tiling=TilingConfig(backend="openslide", mask_backend="openslide", requested_spacing_um=1.0,
                            requested_tile_size_px=256, tolerance=0.05, overlap=0.0),
        segmentation=SegmentationConfig(method="hsv", downsample=64),
        masks=masks,
    )
    save_tiling_result(result, output_dir=Path(out))
    write_tiling_preview(result=result, output_dir=Path(out), downsample=32)
    _report(t, int(len(result.x)), True, "")
    return 0


def _run_lazyslide(slide: str, out: str, _a) -> int:
    import shutil

    import lazyslide as zs

    store = Path(out) / (Path(slide).stem + ".zarr")
    if store.exists():
        shutil.rmtree(store)
    t = time.perf_counter()
    wsi = zs.open_wsi(slide, store=str(store))
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, 256, mpp=1.0, background_fraction=0.5)
    wsi.write()
    n = len(wsi.shapes["tiles"]) if "tiles" in wsi.shapes else None
    _report(t, n, n is not None, "")
    return 0


def _run_trident(slide: str, out: str, a) -> int:
    import contextlib
    import io

    sys.path.insert(0, a.trident_dir)
    from trident import OpenSlideWSI
    from trident.segmentation_models.load import segmentation_model_factory

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        wsi = OpenSlideWSI(slide_path=slide, lazy_init=False)
        wsi.segment_tissue(segmentation_model=segmentation_model_factory("otsu"), target_mag=10, job_dir=out,
                           device="cpu", num_workers=0)
        h5 = wsi.extract_tissue_coords(target_mag=10, patch_size=256, save_coords=out, min_tissue_proportion=0.5)
    _report(t, _h5_rows(h5), Path(h5).exists(), "")
    return 0


def _h5_rows(path) -> int | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["coords"].shape[0])
    except OSError:
        return None


def _report(t0: float, tiles, ok: bool, reason) -> None:
    """One RESULT line: the work's seconds, and the seconds since the parent launched this process."""
    launched = float(os.environ.get("TILING_BENCH_LAUNCHED", "nan"))
    print("RESULT " + json.dumps({"work_s": time.perf_counter() - t0, "since_launch_s": time.time() - launched,
                                  "tiles": tiles, "ok": bool(ok), "reason": reason or ""}), flush=True)


RUNNERS = {"ours": _run_ours, "ours_baseline": _run_ours, "clam": _run_clam, "hs2p": _run_hs2p,
           "lazyslide": _run_lazyslide, "trident": _run_trident}


# -- the parent: which tools, interleaved rounds -------------------------------------------------------------
def _available(tool: str, a, env: dict) -> str:
    """'' when ``tool`` can run here, else why not."""
    if tool == "clam":
        return "" if a.clam_dir and (Path(a.clam_dir) / "create_patches_fp.py").is_file() else "no --clam-dir"
    if tool == "trident":
        if not (a.trident_dir and (Path(a.trident_dir) / "trident").is_dir()):
            return "no --trident-dir"
        mod = "geopandas"
    else:
        mod = {"hs2p": "hs2p", "lazyslide": "lazyslide"}[tool]
    proc = subprocess.run([sys.executable, "-c", f"import {mod}"], env=env, capture_output=True, text=True)
    return "" if proc.returncode == 0 else f"import {mod} failed: {proc.stderr.strip().splitlines()[-1][:160]}"


def _once(tool: str, slide: str, a, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"tiling_{tool}_") as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--run-one", tool, "--slide", slide, "--out", out]
        for k in ("clam_dir", "trident_dir"):
            if getattr(a, k):
                cmd += [f"--{k.replace('_', '-')}", getattr(a, k)]
        proc = subprocess.run(cmd, env={**env, "TILING_BENCH_LAUNCHED": repr(time.time())}, capture_output=True,
                              text=True, timeout=a.timeout)
    lines = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines or not all(r["ok"] for r in lines):
        why = ([r["reason"] for r in lines if not r["ok"]] or [(proc.stderr or proc.stdout).strip()[-300:]])[0]
        return {"ok": False, "reason": why}
    cold, warm = lines[0], lines[-1]
    return {"ok": True, "work_s": warm["work_s"], "first_work_s": cold["work_s"],
            "command_s": cold["since_launch_s"], "tiles": warm["tiles"]}


def _make_slide(cache: Path, size: int, mpp: float) -> Path:
    from mgpath.slides.synthetic import make_synthetic_slide

    path = cache / f"bench_{size}_{mpp:g}.tiff"
    if not path.exists():
        levels = 1
        while size / 4**levels >= 512:
            levels += 1
        make_synthetic_slide(path, size=(size, size), mpp=mpp, levels=levels, downsample=4, tissue_class=0,
                             compression="jpeg", tile=256)
    return path


def compare_tiling(a) -> dict:
    """Interleaved rounds of every available tool on one slide -> medians, rounds, tile counts."""
    here = Path(__file__).resolve().parents[2]
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    peer_path = os.pathsep.join([str(here), *a.peer_path])
    envs = {"ours": {**base_env, "PYTHONPATH": str(here)}}
    if a.baseline_src:
        envs["ours_baseline"] = {**base_env, "PYTHONPATH": str(Path(a.baseline_src).resolve())}
    missing = {}
    for tool in a.peers:
        env = {**base_env, "PYTHONPATH": peer_path}
        why = _available(tool, a, env)
        if why:
            missing[tool] = why
        else:
            envs[tool] = env
    slide = str(Path(a.slide).resolve()) if a.slide else str(_make_slide(Path(a.cache), a.size, a.mpp))
    tools = list(envs)
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for r in range(a.rounds):
        order = tools[r % len(tools):] + tools[: r % len(tools)]
        for tool in order:
            if tool in SLOW and r >= a.rounds_slow:
                continue
            runs[tool].append(_once(tool, slide, a, envs[tool]))
    failed = {t: v[-1]["reason"] for t, v in runs.items() if not all(x["ok"] for x in v)}

    def med(t, k):
        return round(statistics.median(x[k] for x in runs[t]), 3) if t not in failed else None

    res = {
        "slide": slide,
        "rounds": {t: len(runs[t]) for t in tools},
        "work_s": {t: med(t, "work_s") for t in tools},
        "first_work_s": {t: med(t, "first_work_s") for t in tools},
        "command_s": {t: med(t, "command_s") for t in tools},
        "tiles": {t: runs[t][-1].get("tiles") for t in tools},
        "work_s_rounds": {t: [round(x.get("work_s", float("nan")), 3) for x in runs[t]] for t in tools},
        "command_s_rounds": {t: [round(x.get("command_s", float("nan")), 3) for x in runs[t]] for t in tools},
        "missing": missing,
        "failed": failed,
    }
    ref = [t for t in ("clam", "hs2p") if t in runs and t not in failed]
    if ref and "ours" not in failed:
        ratios = [runs["ours"][i]["work_s"] / min(runs[t][i]["work_s"] for t in ref) for i in range(len(runs["ours"]))]
        res["ours_work_over_fastest_of_clam_hs2p"] = round(statistics.median(ratios), 3)
        res["ratio_reference"] = ref
    if "ours_baseline" in runs and not failed.get("ours_baseline") and "ours" not in failed:
        res["ours_work_over_baseline"] = round(statistics.median(
            runs["ours"][i]["work_s"] / runs["ours_baseline"][i]["work_s"] for i in range(len(runs["ours"]))), 3)
    return res


def extraction(a, slide_path: Path, tmp: str) -> dict:
    """Encode the first ``--max-tiles`` 10x tiles through ``extract_features`` and with the encoder alone."""
    import lightning.pytorch as pl
    import numpy as np
    import torch

    from mgpath.io import read_coords
    from mgpath.pipelines.extract import extract_features
    from mgpath.pipelines.jobs import SlideJob
    from mgpath.pipelines.tile import tile_slide
    from mgpath.pipelines.tile_dataset import TileDataset
    from mgpath.slides.grid import TileParams
    from vapt.backbones import build_backbone

    tpe = TileParams(tile_size=a.tile_size, magnification=a.extract_magnification or 10)
    tile_slide(slide_path, tmp, tpe, overwrite=True)
    coords_file = Path(tmp) / tpe.tag / "coords" / f"{slide_path.stem}.h5"
    xy, attrs = read_coords(coords_file)
    res = {"extract_magnification": attrs["target_magnification"], "extract_unique_tiles": int(min(len(xy), a.max_tiles))}
    xy = np.resize(xy, (a.max_tiles, 2)) if a.max_tiles > len(xy) else xy[: a.max_tiles]
    enc = build_backbone(a.encoder, img_size=224)
    cfg = enc.data_config
    job = SlideJob(slide_path.stem, str(slide_path), str(coords_file), str(Path(tmp) / "feats" / f"{slide_path.stem}.h5"),
                   xy, attrs)
    dev = torch.device(a.device)
    accel = "gpu" if a.device == "cuda" else "cpu"
    kw = dict(batch_size=a.batch_size, workers=a.workers, accelerator=accel, devices=1, overwrite=True, progress=False)
    if a.device == "cuda":  # warm-up run (CUDA context, kernels), then the timed run
        extract_features([job], enc, a.encoder, **kw)

    class BatchTimer(pl.Callback):  # (time, tiles) per predicted batch
        times: list = []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.times.append((time.perf_counter(), len(batch[1])))

    timer = BatchTimer()
    t = time.perf_counter()
    rows = extract_features([job], enc, a.encoder, callbacks=[timer], **kw)
    extract_s = time.perf_counter() - t
    assert rows[0]["status"] == "done", rows
    bt = timer.times
    steady = (sum(n for _, n in bt[1:]) / (bt[-1][0] - bt[0][0])) if len(bt) > 2 else None
    ds = TileDataset([job], tuple(cfg["input_size"][-2:]), cfg["mean"], cfg["std"])  # the same tensors
    n1 = min(len(ds), 128)
    t = time.perf_counter()
    for i in range(n1):
        ds[i]
    read_s = (time.perf_counter() - t) * len(ds) / n1  # one process, extrapolated
    x = torch.cat([b[0] for b in torch.utils.data.DataLoader(ds, batch_size=256, num_workers=a.workers)])
    enc = enc.to(dev).eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if a.device == "cuda" else torch.autocast("cpu", enabled=False)

    def run():
        with torch.inference_mode(), amp:
            for i in range(0, len(x), a.batch_size):
                enc(x[i : i + a.batch_size].to(dev, non_blocking=True))
        if a.device == "cuda":
            torch.cuda.synchronize()

    run() if a.device == "cuda" else None
    t = time.perf_counter()
    run()
    enc_s = time.perf_counter() - t
    n = len(xy)
    res.update({
        "encoder": a.encoder, "device": a.device, "torch_threads": torch.get_num_threads(), "extract_tiles": n,
        "batch_size": a.batch_size, "workers": a.workers, "extract_tiles_per_s": round(n / extract_s, 2),
        "extract_steady_tiles_per_s": None if steady is None else round(steady, 2),
        "encoder_alone_tiles_per_s": round(n / enc_s, 2),
        "read_transform_tiles_per_s_1proc": round(n / read_s, 2),
        "extract_vs_encoder": round(enc_s / extract_s, 3),
        "extract_steady_vs_encoder": None if steady is None else round(steady * enc_s / n, 3),
    })
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--slide", default=None, help="tile this slide instead of the generated one")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "vapt-mgpath" / "bench"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rounds-slow", type=int, default=5, help=f"rounds of the slow peers {SLOW} (of --rounds)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--clam-dir", default=None, help="a checkout of mahmoodlab/CLAM")
    p.add_argument("--trident-dir", default=None, help="a checkout of mahmoodlab/TRIDENT (needs geopandas)")
    p.add_argument("--peer-path", nargs="*", default=[], help="folders put on the peers' PYTHONPATH")
    p.add_argument("--baseline-src", default=None, help="a folder holding another mgpath package to time too")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to one tool on one slide")
    p.add_argument("--skip-extract", action="store_true", help="time tiling only")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--encoder", default="vit_small_patch16_224")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-tiles", type=int, default=128, help="tiles encoded (keep small on CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--extract-magnification", type=float, default=None, help="of the tiles encoded (10)")
    p.add_argument("--run-one", choices=list(RUNNERS), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run_one:  # the slide twice in one process: a first (cold) slide, then one of a cohort (warm)
        for i in range(1 if a.run_one in SLOW else 2):
            out = Path(a.out) / f"run{i}"
            out.mkdir(parents=True, exist_ok=True)
            RUNNERS[a.run_one](a.slide, str(out), a)
        return 0
    Path(a.cache).mkdir(parents=True, exist_ok=True)
    result = {"bench": "mgpath_tiling", "magnification": 10, "tile_size": 256, "min_tissue": 0.5,
              "cpus": os.cpu_count(), **compare_tiling(a)}
    if not a.skip_extract:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(extraction(a, Path(result["slide"]), tmp))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
