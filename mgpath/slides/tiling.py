"""Tile slides: a grid at a target magnification/MPP, kept where there is tissue, saved as a coordinates h5.

Output layout of ``mgpath tile SLIDES --out OUT`` (one sub-folder per requested resolution, ``10x``, ``5x``,
or ``mpp0.5`` for ``--mpp-target 0.5``)::

    OUT/geojson/<slide_id>.geojson         tissue polygons, level-0 pixels (QuPath: File > Import objects)
    OUT/<tag>/coords/<slide_id>.h5         dataset ``coords`` (N, 2) int64 level-0 top-left, + attributes
    OUT/<tag>/previews/<slide_id>.png      segmentation image with tissue contours and the tile grid
    OUT/summary.csv, OUT/summary.json      one row per slide: status (done / cached / skipped), reason, tiles

Every file is written to a temporary name in the same folder and renamed, so a killed run never leaves a
half-written output; a rerun skips slides whose outputs exist with the same settings ("cached").
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vapt.atomic import atomic_path, write_bytes_atomic
from mgpath.slides.reader import Slide, SlideError, magnification_to_mpp, slide_id_from_path
from mgpath.slides.tissue import TissueParams, segment_tissue, write_geojson, write_preview

__all__ = [
    "TileParams",
    "tile_grid",
    "tissue_fraction",
    "write_coords",
    "read_coords",
    "tile_slide",
    "tile_slides",
    "find_slides",
    "main",
    "SLIDE_EXTENSIONS",
]

#: file endings treated as slides when a folder is given
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)
COORDS_FORMAT = "mgpath-coords-1"


@dataclass
class TileParams:
    """Tiling settings.

    Attributes
    ----------
    tile_size : tile width/height in pixels at the target resolution.
    magnification : target magnification (10x = 1.0 um/px); ignored when ``target_mpp`` is set.
    target_mpp : target um/px.
    overlap : overlap between neighbouring tiles in target pixels (stride = tile_size - overlap).
    min_tissue : minimum fraction of a tile covered by tissue (tiles with no tissue are never kept).
    use_tissue : False keeps every grid tile (no segmentation; for images that are all tissue).
    edge : keep tiles that cross the right/bottom slide border (read as white beyond it).
    """

    tile_size: int = 256
    magnification: float | None = 10.0
    target_mpp: float | None = None
    overlap: int = 0
    min_tissue: float = 0.5
    use_tissue: bool = True
    edge: bool = False

    def __post_init__(self):
        if self.tile_size < 1:
            raise ValueError(f"--tile-size must be >= 1, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"--overlap must be in [0, tile_size), got {self.overlap} for tile size {self.tile_size}"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"--min-tissue is a fraction in [0, 1], got {self.min_tissue}")
        if self.target_mpp is None and self.magnification is None:
            raise ValueError("give a target --magnification or --mpp-target")
        if self.mpp <= 0:
            raise ValueError(f"target resolution must be positive, got {self.mpp} um/px")

    @property
    def mpp(self) -> float:
        """Target um/px."""
        return (
            float(self.target_mpp)
            if self.target_mpp is not None
            else magnification_to_mpp(self.magnification)
        )

    @property
    def tag(self) -> str:
        """Output sub-folder name: ``10x``, ``2.5x`` or ``mpp0.25``."""
        if self.target_mpp is not None:
            return f"mpp{self.target_mpp:g}"
        return f"{self.magnification:g}x"

    def key(self) -> dict:
        """Settings that must match for an existing coords file to be reused."""
        return {
            "patch_size": int(self.tile_size),
            "target_mpp": round(self.mpp, 6),
            "overlap": int(self.overlap),
            "min_tissue": float(self.min_tissue),
            "use_tissue": bool(self.use_tissue),
            "edge": bool(self.edge),
        }


# -- grid and tissue fraction --------------------------------------------------------------------------
def tile_grid(
    dimensions: tuple[int, int], size_level0: float, step_level0: float, edge: bool = False
) -> np.ndarray:
    """Level-0 top-left corners ``(N, 2)`` int64 of a regular grid from ``(0, 0)``, row-major (y, then x).

    Corner ``i`` along an axis is ``round(i * step_level0)``. Without ``edge`` only tiles lying entirely
    inside the slide are kept: ``floor((W - size) / step) + 1`` per axis (0 when the slide is smaller).
    """
    w, h = dimensions

    def n(extent):
        if edge:
            return int(math.ceil(extent / step_level0 - 1e-9))
        if extent < size_level0 - 1e-6:
            return 0
        return int(math.floor((extent - size_level0) / step_level0 + 1e-6)) + 1

    nx, ny = n(w), n(h)
    xs = np.round(np.arange(nx) * step_level0).astype(np.int64)
    ys = np.round(np.arange(ny) * step_level0).astype(np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def tissue_fraction(
    mask: np.ndarray, downsample: tuple[float, float], coords: np.ndarray, size_level0: float
) -> np.ndarray:
    """Exact area fraction of each tile covered by ``mask`` (pixels taken as constant squares).

    ``mask`` ``(h, w)`` bool at ``downsample=(sx, sy)`` level-0 px per pixel; ``coords`` ``(N, 2)`` level-0
    top-left; returns ``(N,)`` float in [0, 1] (area beyond the slide counts as no tissue).
    """
    if len(coords) == 0:
        return np.zeros(0)
    sx, sy = downsample
    h, w = mask.shape
    S = np.zeros((h + 1, w + 1), np.float64)
    S[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def integral(x, y):  # bilinear interpolation of the integral image is exact for piecewise-constant pixels
        x = np.clip(x, 0, w)
        y = np.clip(y, 0, h)
        x0 = np.minimum(np.floor(x).astype(np.int64), w - 1) if w else np.zeros_like(x, np.int64)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 1) if h else np.zeros_like(y, np.int64)
        fx, fy = x - x0, y - y0
        return (
            S[y0, x0] * (1 - fx) * (1 - fy)
            + S[y0, x0 + 1] * fx * (1 - fy)
            + S[y0 + 1, x0] * (1 - fx) * fy
            + S[y0 + 1, x0 + 1] * fx * fy
        )

    c = np.asarray(coords, np.float64)
    x0, y0 = c[:, 0] / sx, c[:, 1] / sy
    x1, y1 = (c[:, 0] + size_level0) / sx, (c[:, 1] + size_level0) / sy
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)


# -- h5 io ---------------------------------------------------------------------------------------------
def _atomic_h5(path: Path, fill) -> None:
    """Create ``path`` via a temporary file in the same folder: ``fill(h5py.File)`` then rename."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        fill(f)


def _h5_attr(v):
    if v is None:
        return "none"
    if isinstance(v, dict):
        return json.dumps(v)
    return v


def write_coords(
    path: str | os.PathLike, coords: np.ndarray, attrs: dict, tissue_fraction: np.ndarray | None = None
) -> None:
    """Write a coordinates h5 atomically: ``coords`` (N, 2) int64 with ``attrs`` on the dataset and the file.

    Attributes go on the ``coords`` dataset (where CLAM and TRIDENT put them) and are mirrored on the root.
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)

    def fill(f):
        d = f.create_dataset("coords", data=coords)
        for k, v in attrs.items():
            d.attrs[k] = _h5_attr(v)
            f.attrs[k] = _h5_attr(v)
        if tissue_fraction is not None:
            f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))

    _atomic_h5(Path(path), fill)


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str) and v == "none":
        return None
    return v


def read_coords(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a coordinates h5 written by mgpath, CLAM (``patches/<id>.h5``) or TRIDENT (``<id>_patches.h5``).

    Returns
    -------
    coords : ``(N, 2)`` int64 level-0 top-left corners.
    attrs : normalised dict with keys

        - ``slide_id``: from the ``name`` attribute or the file name (``_patches`` suffix removed)
        - ``patch_size``: tile pixels to produce (CLAM: pixels at ``patch_level``)
        - ``patch_size_level0``: tile footprint in level-0 pixels (float)
        - ``patch_level``: pyramid level (None if unknown)
        - ``target_mpp``, ``target_magnification``, ``mpp`` (level-0): None when the file does not say
        - ``step_level0``: grid step in level-0 pixels (None if unknown)
        - ``source``: ``"mgpath"``, ``"trident"`` or ``"clam"``
        - ``raw``: all attributes as stored
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise ValueError(
                    f"{path} has no 'coords' dataset; is it a CLAM/TRIDENT/mgpath coordinates file?"
                )
            coords = np.asarray(f["coords"][()]).astype(np.int64).reshape(-1, 2)
            raw = {k: _decode(v) for k, v in f.attrs.items()}
            raw.update({k: _decode(v) for k, v in f["coords"].attrs.items()})
    except OSError as e:
        raise ValueError(f"{path} is not a readable h5 file ({e})") from None
    name = raw.get("name") or raw.get("slide_id")
    stem = path.stem[: -len("_patches")] if path.stem.endswith("_patches") else path.stem
    out = {
        "slide_id": str(name) if name else stem,
        "raw": raw,
        "patch_level": raw.get("patch_level"),
        "target_mpp": None,
        "target_magnification": None,
        "mpp": None,
        "step_level0": None,
    }
    if "patch_size" not in raw:
        raise ValueError(f"{path} has no 'patch_size' attribute; cannot tell the tile size")
    ps = int(raw["patch_size"])
    out["patch_size"] = ps
    if str(raw.get("format", "")).startswith("mgpath"):
        out.update(
            source="mgpath",
            patch_size_level0=float(raw.get("patch_size_level0_exact", raw["patch_size_level0"])),
            target_mpp=raw.get("target_mpp"),
            target_magnification=raw.get("target_magnification"),
            mpp=raw.get("mpp"),
            step_level0=raw.get("step_level0"),
        )
    elif "patch_size_level0" in raw or "target_magnification" in raw:
        ps0 = float(raw.get("patch_size_level0") or ps)
        tmag = raw.get("target_magnification")
        l0mag = raw.get("level0_magnification")
        ov = float(raw.get("overlap") or 0)
        out.update(
            source="trident",
            patch_size_level0=ps0,
            target_magnification=float(tmag) if tmag else None,
            target_mpp=magnification_to_mpp(float(tmag)) if tmag else None,
            mpp=magnification_to_mpp(float(l0mag)) if l0mag else None,
            step_level0=ps0 - ov * ps0 / ps,
        )
    else:
        ds = raw.get("downsample")
        ds = float(np.asarray(ds).reshape(-1)[0]) if ds is not None else 1.0
        out.update(source="clam", patch_size_level0=ps * ds, step_level0=None)
    return coords, out


# -- one slide -----------------------------------------------------------------------------------------
def _paths(out: Path, slide_id: str, tag: str) -> dict[str, Path]:
    return {
        "coords": out / tag / "coords" / f"{slide_id}.h5",
        "preview": out / tag / "previews" / f"{slide_id}.png",
        "geojson": out / "geojson" / f"{slide_id}.geojson",
    }


def _existing(out: Path, slide_id: str, tps: list[TileParams]) -> tuple[dict | None, str]:
    """Tile counts when every output of a slide exists with the same settings, else (None, why)."""
    import h5py

    counts = {}
    for tp in tps:
        p = _paths(out, slide_id, tp.tag)
        if not p["coords"].exists():
            return None, ""
        try:
            with h5py.File(p["coords"], "r") as f:
                a = {k: _decode(v) for k, v in f.attrs.items()}
                n = int(f["coords"].shape[0])
        except OSError:
            return None, ""
        stored = {k: a.get(k) for k in tp.key()}
        if stored.get("target_mpp") is not None:
            stored["target_mpp"] = round(float(stored["target_mpp"]), 6)
        for k in ("use_tissue", "edge"):
            stored[k] = bool(stored[k]) if stored[k] is not None else None
        if stored != tp.key():
            diff = {k: (stored[k], v) for k, v in tp.key().items() if stored[k] != v}
            return None, f"{p['coords']} exists with different settings {diff} (stored, requested)"
        counts[tp.tag] = n
    return counts, ""


def tile_slide(
    path: str | os.PathLike,
    out: str | os.PathLike,
    tile_params: list[TileParams] | TileParams,
    tissue_params: TissueParams | None = None,
    mpp: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Segment one slide and write its coordinates for each resolution in ``tile_params``.

    Returns a summary row: ``slide_id``, ``path``, ``status`` (``done``/``cached``/``skipped``), ``reason``,
    ``mpp``, ``tissue_mm2``, ``tiles_<tag>`` per resolution, ``seconds``. Never raises for a bad slide.
    """
    t0 = time.perf_counter()
    tps = [tile_params] if isinstance(tile_params, TileParams) else list(tile_params)
    tissue_params = tissue_params or TissueParams()
    out = Path(out)
    path = str(path)
    sid = slide_id_from_path(path)
    row = {"slide_id": sid, "path": path, "status": "skipped", "reason": "", "mpp": None, "tissue_mm2": None}
    row.update({f"tiles_{tp.tag}": None for tp in tps})
    if not overwrite:
        counts, why = _existing(out, sid, tps)
        if why:
            row["reason"] = why + "; pass --overwrite or use another --out"
            row["seconds"] = round(time.perf_counter() - t0, 3)
            return row
        if counts is not None:
            row.update(status="cached", reason="outputs exist")
            row.update({f"tiles_{k}": v for k, v in counts.items()})
            row["seconds"] = round(time.perf_counter() - t0, 3)
            return row
    try:
        with Slide(path, mpp=mpp) as slide:
            row.update(mpp=round(slide.mpp, 6), mpp_source=slide.mpp_source)
            results = _tile_open_slide(slide, out, tps, tissue_params)
        row.update(results)
        row["status"] = "done" if not row.get("reason") else "skipped"
    except SlideError as e:
        row["reason"] = str(e)
    except Exception as e:  # noqa: BLE001 - keep going on anything a broken file throws; say what happened
        row["reason"] = f"{type(e).__name__}: {e} (while tiling {path})"
        if os.environ.get("MGPATH_DEBUG"):
            traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _tile_open_slide(slide: Slide, out: Path, tps: list[TileParams], tp_tissue: TissueParams) -> dict:
    res: dict = {}
    tissue = segment_tissue(slide, tp_tissue)
    res["tissue_mm2"] = round(tissue.area_mm2, 4)
    need_tissue = any(tp.use_tissue for tp in tps)
    if need_tissue and not tissue.polygons:
        res["reason"] = (
            f"no tissue found in {slide.path} (saturation threshold {tissue.threshold:g}, "
            f"min area {tp_tissue.min_tissue_mm2} mm^2); lower --min-saturation or --min-tissue-area, "
            "or pass --no-tissue to tile everything"
        )
        return res
    plans = []
    for tp in tps:
        size0 = tp.tile_size * tp.mpp / slide.mpp
        step0 = (tp.tile_size - tp.overlap) * tp.mpp / slide.mpp
        coords = tile_grid(slide.dimensions, size0, step0, tp.edge)
        if tp.use_tissue:
            frac = tissue_fraction(tissue.mask, tissue.downsample, coords, size0)
            keep = (frac >= tp.min_tissue) & (frac > 0)
            coords, frac = coords[keep], frac[keep]
        else:
            frac = None
        if len(coords) == 0:
            res["reason"] = (
                f"no {tp.tag} tiles of {tp.tile_size} px with tissue fraction >= {tp.min_tissue} in "
                f"{slide.path} (tissue {tissue.area_mm2:.3f} mm^2); lower --min-tissue or --tile-size"
            )
            return res
        plans.append((tp, coords, frac, size0, step0))
    if need_tissue:
        write_geojson(tissue.polygons, _paths(out, slide.slide_id, "")["geojson"], slide.slide_id, tp_tissue)
    for tp, coords, frac, size0, step0 in plans:
        p = _paths(out, slide.slide_id, tp.tag)
        level, _ = slide.best_level_for_downsample(size0 / tp.tile_size)
        ds = slide.level_downsamples[level]
        attrs = {
            "format": COORDS_FORMAT,
            "name": slide.slide_id,
            "slide_path": os.path.abspath(slide.path),
            "patch_size": int(tp.tile_size),
            "patch_size_level0": int(round(size0)),
            "patch_size_level0_exact": float(size0),
            "step_level0": float(step0),
            "patch_level": int(level),
            "patch_size_at_level": int(round(size0 / ds)),
            "downsample": np.array([ds, ds], np.float64),
            "level_dim": np.array(slide.level_dimensions[level], np.int64),
            "downsampled_level_dim": np.array(slide.level_dimensions[level], np.int64),
            "level0_width": int(slide.dimensions[0]),
            "level0_height": int(slide.dimensions[1]),
            "mpp": float(slide.mpp),
            "level0_magnification": float(slide.magnification),
            "target_mpp": round(float(tp.mpp), 6),
            "target_magnification": float(10.0 / tp.mpp),
            "overlap": int(tp.overlap),
            "min_tissue": float(tp.min_tissue),
            "use_tissue": bool(tp.use_tissue),
            "edge": bool(tp.edge),
            "tissue_params": asdict(tp_tissue),
        }
        write_preview(tissue, p["preview"], coords, size0)
        write_coords(p["coords"], coords, attrs, frac)  # last: its presence marks the slide done
        res[f"tiles_{tp.tag}"] = int(len(coords))
    return res


# -- many slides ---------------------------------------------------------------------------------------
def find_slides(inputs: list[str], recursive: bool = False) -> tuple[list[str], list[dict]]:
    """Slide files from files and folders. Returns ``(paths, problems)`` where problems are summary rows."""
    paths, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(str(q) for q in it if q.is_file() and q.name.lower().endswith(SLIDE_EXTENSIONS))
            if not found:
                problems.append(
                    {
                        "slide_id": p.name,
                        "path": str(p),
                        "status": "skipped",
                        "reason": f"no slide files ({', '.join(SLIDE_EXTENSIONS)}) in folder {p}",
                    }
                )
            paths += found
        elif p.is_file():
            paths.append(str(p))
        else:
            problems.append(
                {
                    "slide_id": slide_id_from_path(p),
                    "path": str(p),
                    "status": "skipped",
                    "reason": f"{p} does not exist",
                }
            )
    seen: dict[str, str] = {}
    unique = []
    for q in paths:
        sid = slide_id_from_path(q)
        if sid in seen:
            problems.append(
                {
                    "slide_id": sid,
                    "path": q,
                    "status": "skipped",
                    "reason": f"duplicate slide id {sid!r} (also {seen[sid]}); rename one of the files",
                }
            )
            continue
        seen[sid] = q
        unique.append(q)
    return unique, problems


def _clean_temp(out: Path) -> None:
    """Remove temporary files a killed run left behind (``<name>.<random>.tmp``)."""
    if out.exists():
        for t in out.rglob("*.tmp"):
            try:
                t.unlink()
            except OSError:
                pass


def _worker(args):
    return tile_slide(*args)


def tile_slides(
    inputs: list[str],
    out: str | os.PathLike,
    tile_params: list[TileParams] | TileParams,
    tissue_params: TissueParams | None = None,
    mpp: float | dict | None = None,
    workers: int = 1,
    overwrite: bool = False,
    recursive: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Tile many slides (``workers`` processes), write ``OUT/summary.csv`` and ``.json``; return the rows.

    ``mpp`` is one override for all slides or a ``{slide_id: mpp}`` dict.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_temp(out)
    tps = [tile_params] if isinstance(tile_params, TileParams) else list(tile_params)
    tags = [tp.tag for tp in tps]
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate target resolutions {tags}")
    paths, rows = find_slides(inputs, recursive)

    def mpp_for(p):
        return mpp.get(slide_id_from_path(p)) if isinstance(mpp, dict) else mpp

    jobs = [(p, str(out), tps, tissue_params, mpp_for(p), overwrite) for p in paths]
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="tiling", unit="slide", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            results[j[0]] = tile_slide(*j)
            bar.update(1)
    else:
        results = _run_pool(jobs, workers, bar)
    bar.close()
    rows += [results[p] for p in paths]
    write_summary(rows, out, tags)
    return rows


def _run_pool(jobs, workers, bar) -> dict[str, dict]:
    """Run jobs in a process pool; a slide that crashes its worker is retried alone, then reported."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    results: dict[str, dict] = {}
    pending = list(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        futs = {ex.submit(_worker, j): j for j in pending}
        crashed = []
        for fut in as_completed(futs):
            j = futs[fut]
            try:
                results[j[0]] = fut.result()
                bar.update(1)
            except BrokenProcessPool:
                crashed.append(j)
    for j in crashed:  # isolate: one process per slide
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
            try:
                results[j[0]] = ex.submit(_worker, j).result()
            except BrokenProcessPool:
                results[j[0]] = {
                    "slide_id": slide_id_from_path(j[0]),
                    "path": j[0],
                    "status": "skipped",
                    "reason": f"the process reading {j[0]} crashed (corrupt file?)",
                }
        bar.update(1)
    return results


SUMMARY_FIELDS = ["slide_id", "status", "reason", "mpp", "mpp_source", "tissue_mm2", "seconds", "path"]


def write_summary(rows: list[dict], out: Path, tags: list[str]) -> None:
    """Write ``summary.csv`` and ``summary.json`` (atomically) into ``out``."""

    fields = SUMMARY_FIELDS[:3] + [f"tiles_{t}" for t in tags] + SUMMARY_FIELDS[3:]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    write_bytes_atomic(out / "summary.csv", buf.getvalue().encode())
    n = {s: sum(r["status"] == s for r in rows) for s in ("done", "cached", "skipped")}
    doc = {"counts": n, "tags": tags, "slides": [{k: r.get(k) for k in fields} for r in rows]}
    write_bytes_atomic(out / "summary.json", json.dumps(doc, indent=1).encode())


def format_summary(rows: list[dict], tags: list[str]) -> str:
    """Human-readable per-run summary."""
    n = {s: sum(r["status"] == s for r in rows) for s in ("done", "cached", "skipped")}
    lines = [
        f"{len(rows)} slides: {n['done']} done, {n['cached']} cached (already done), {n['skipped']} skipped"
    ]
    for r in rows:
        tiles = ", ".join(f"{t}: {r.get(f'tiles_{t}')}" for t in tags if r.get(f"tiles_{t}") is not None)
        extra = f" ({tiles})" if tiles else ""
        why = f" - {r['reason']}" if r["status"] == "skipped" else ""
        lines.append(f"  {r['status']:<8} {r['slide_id']}{extra}{why}")
    return "\n".join(lines)


def _read_mpp_csv(path: str) -> dict[str, float]:
    """``slide_id,mpp`` (or TRIDENT's ``wsi,mpp``) CSV -> dict."""
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            key = r.get("slide_id") or r.get("wsi") or r.get("slide")
            if key is None or "mpp" not in r:
                raise ValueError(f"{path} needs columns slide_id (or wsi) and mpp")
            out[slide_id_from_path(key)] = float(r["mpp"])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mgpath tile",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or folders of slides")
    p.add_argument("--out", required=True, help="output folder (see layout in `mgpath tile --help`)")
    p.add_argument(
        "--magnification",
        type=float,
        nargs="+",
        default=None,
        help="target magnification(s), e.g. 10 5 (10x = 1.0 um/px); default 10",
    )
    p.add_argument(
        "--mpp-target", type=float, nargs="+", default=None, help="target um/px instead of magnification"
    )
    p.add_argument("--tile-size", type=int, default=256, help="tile pixels at the target resolution (256)")
    p.add_argument("--overlap", type=int, default=0, help="overlap in target pixels (0)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction per tile (0.5)")
    p.add_argument("--no-tissue", action="store_true", help="keep every grid tile (no tissue filter)")
    p.add_argument("--edge", action="store_true", help="keep tiles crossing the right/bottom border")
    p.add_argument("--workers", type=int, default=1, help="slides processed in parallel (processes)")
    p.add_argument("--mpp", type=float, default=None, help="level-0 um/px override for every slide")
    p.add_argument(
        "--mpp-csv", default=None, help="CSV with columns slide_id (or wsi) and mpp: per-slide override"
    )
    p.add_argument(
        "--seg-mpp", type=float, default=TissueParams.seg_mpp, help="um/px of the segmentation image (8)"
    )
    p.add_argument("--threshold", choices=["fixed", "otsu"], default=TissueParams.threshold)
    p.add_argument(
        "--min-saturation",
        type=int,
        default=TissueParams.min_saturation,
        help="saturation threshold 0-255 (fixed) / floor (otsu) (15)",
    )
    p.add_argument(
        "--min-tissue-area",
        type=float,
        default=TissueParams.min_tissue_mm2,
        help="drop tissue pieces under this many mm^2 (0.05)",
    )
    p.add_argument(
        "--min-hole-area",
        type=float,
        default=TissueParams.min_hole_mm2,
        help="fill holes under this many mm^2 (0.01)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo slides whose outputs already exist")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``mgpath tile``. Exit status 0 when every slide is done or cached, 1 when some were skipped."""
    args = build_parser().parse_args(argv)
    try:
        tps = []
        if args.mpp_target:
            tps += [
                TileParams(
                    args.tile_size, None, m, args.overlap, args.min_tissue, not args.no_tissue, args.edge
                )
                for m in args.mpp_target
            ]
        mags = args.magnification or ([] if args.mpp_target else [10.0])
        tps += [
            TileParams(args.tile_size, m, None, args.overlap, args.min_tissue, not args.no_tissue, args.edge)
            for m in mags
        ]
        tissue = TissueParams(
            seg_mpp=args.seg_mpp,
            threshold=args.threshold,
            min_saturation=args.min_saturation,
            min_tissue_mm2=args.min_tissue_area,
            min_hole_mm2=args.min_hole_area,
        )
        mpp = _read_mpp_csv(args.mpp_csv) if args.mpp_csv else args.mpp
        if args.mpp is not None and args.mpp <= 0:
            raise ValueError(f"--mpp must be positive, got {args.mpp}")
    except (ValueError, OSError) as e:
        print(f"mgpath tile: {e}", file=sys.stderr)
        return 2
    rows = tile_slides(
        args.inputs,
        args.out,
        tps,
        tissue,
        mpp,
        args.workers,
        args.overwrite,
        args.recursive,
        progress=not args.no_progress,
    )
    print(format_summary(rows, [tp.tag for tp in tps]))
    print(f"summary: {Path(args.out) / 'summary.csv'}")
    return 0 if all(r["status"] in ("done", "cached") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
