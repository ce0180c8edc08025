"""Tile slides: a grid at a target magnification/MPP, kept where there is tissue, saved as a coordinates h5.

Output layout of ``mgpath tile SLIDES --out OUT`` (one sub-folder per requested resolution, ``10x``, ``5x``,
or ``mpp0.5`` for ``--mpp-target 0.5``)::

    OUT/geojson/<slide_id>.geojson         tissue polygons, level-0 pixels (QuPath: File > Import objects)
    OUT/<tag>/coords/<slide_id>.h5         dataset ``coords`` (N, 2) int64 level-0 top-left, + attributes
    OUT/<tag>/previews/<slide_id>.png      2048-px thumbnail with tissue contours, holes and the tile grid
    OUT/previews.html, OUT/previews.png    every slide's previews on one page / one grid (contact sheet)
    OUT/summary.csv, OUT/summary.json      one row per slide: status (done / cached / skipped), reason, tiles

Every file is written to a temporary name in the same folder and renamed, so a killed run never leaves a
half-written output; a rerun skips slides whose outputs exist with the same settings ("cached").
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mgpath.io import COORDS_FORMAT, read_coords_header, write_coords
from mgpath.pipelines.discovery import find_slides
from mgpath.pipelines.locks import SlideLock, clean_temp
from mgpath.pipelines.summary import count_line, count_statuses, format_rows, write_summary_files
from mgpath.slides import preview
from mgpath.slides.grid import TileParams, tile_grid, tissue_fraction
from mgpath.slides.reader import Slide, SlideError, slide_id_from_path
from mgpath.slides.tissue import TissueParams, segment_tissue, write_geojson
from vapt.fileio.atomic import confined

__all__ = ["format_summary", "tile_slide", "tile_slides", "write_summary"]


def _paths(out: Path, slide_id: str, tag: str) -> dict[str, Path]:
    """Output files of one slide, each confined to ``out`` (`ValueError` naming the slide otherwise)."""
    return {
        "coords": confined(out / tag / "coords", f"{slide_id}.h5", what=f"coordinates of slide {slide_id!r}:"),
        "preview": confined(out / tag / "previews", f"{slide_id}.png", what=f"preview of slide {slide_id!r}:"),
        "geojson": confined(out / "geojson", f"{slide_id}.geojson", what=f"tissue of slide {slide_id!r}:"),
    }


def _source_identity(path: str, tissue_params: TissueParams, mpp: float | None) -> dict:
    """What besides the tile settings determines a slide's outputs: the slide file, tissue settings, MPP override."""
    st = os.stat(path)
    ident = {"slide_size": int(st.st_size), "slide_mtime": int(st.st_mtime), "tissue_params": asdict(tissue_params)}
    if mpp is not None:
        ident["mpp_override"] = round(float(mpp), 6)
    return ident


def _stored_identity(a: dict, tp: TileParams, wanted: dict) -> dict:
    stored = {k: a.get(k) for k in tp.key()}
    if stored.get("target_mpp") is not None:
        stored["target_mpp"] = round(float(stored["target_mpp"]), 6)
    for k in ("use_tissue", "edge"):
        stored[k] = bool(stored[k]) if stored[k] is not None else None
    tissue = a.get("tissue_params")
    stored["tissue_params"] = json.loads(tissue) if isinstance(tissue, str) else tissue
    for k in ("slide_size", "slide_mtime"):
        stored[k] = a.get(k)
    if "mpp_override" in wanted:
        stored["mpp_override"] = round(float(a["mpp"]), 6) if a.get("mpp") is not None else None
    return stored


def _existing(out: Path, slide_id: str, tps: list[TileParams], source: dict) -> tuple[dict | None, str]:
    """Tile counts when every output of a slide exists and was made from the same inputs, else (None, why).

    ``why`` is empty when outputs are missing (the slide is simply to do) and says what changed when they
    exist but were made with other settings or from another version of the slide file (stale).
    """
    counts = {}
    for tp in tps:
        p = _paths(out, slide_id, tp.tag)
        if not p["coords"].exists():
            return None, ""
        try:
            a, n = read_coords_header(p["coords"])
        except (OSError, KeyError, ValueError):
            return None, ""
        wanted = {**tp.key(), **source}
        stored = _stored_identity(a, tp, wanted)
        if stored != wanted:
            diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            made = ", ".join(f"{k}={a_!r}" for k, (a_, _) in diff.items())
            now = ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items())
            return None, (f"stale: {p['coords']} exists with different settings: made with {made}, now {now}")
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
    try:
        source = _source_identity(path, tissue_params, mpp)
    except OSError as e:
        row.update(reason=f"cannot read {path}: {e.strerror}", seconds=round(time.perf_counter() - t0, 3))
        return row
    lock = SlideLock(out / ".locks" / f"{sid}.lock")
    if not lock.acquire():
        row.update(reason=f"busy: another run ({lock.owner}) is tiling {sid} into {out}; rerun when it ends",
                   seconds=round(time.perf_counter() - t0, 3))
        return row
    try:
        return _tile_locked(path, out, tps, tissue_params, mpp, overwrite, row, source, t0)
    finally:
        lock.release()


def _tile_locked(path, out, tps, tissue_params, mpp, overwrite, row, source, t0) -> dict:
    sid = row["slide_id"]
    if not overwrite:
        counts, why = _existing(out, sid, tps, source)
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
        with Slide(path, mpp=mpp) as slide, slide.sharing_levels():  # segmentation and preview share a read
            row.update(mpp=round(slide.mpp, 6), mpp_source=slide.mpp_source)
            results = _tile_open_slide(slide, out, tps, tissue_params, source)
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


#: longer side in pixels of the previews (``OUT/<tag>/previews/<slide_id>.png``)
PREVIEW_SIDE = 2048


def _tile_open_slide(slide: Slide, out: Path, tps: list[TileParams], tp_tissue: TissueParams, source: dict) -> dict:
    res: dict = {}
    thumb = None  # one thumbnail for the previews of every resolution
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
            "slide_size": source["slide_size"],
            "slide_mtime": source["slide_mtime"],
        }
        if thumb is None:
            thumb = slide.thumbnail(PREVIEW_SIDE, resample="area")
        preview.write_preview(slide, p["preview"], tissue, coords, size0, tag=tp.tag, thumbnail=thumb)
        write_coords(p["coords"], coords, attrs, frac)  # last: its presence marks the slide done
        res[f"tiles_{tp.tag}"] = len(coords)
    return res


def _worker(args):
    return tile_slide(*args)


def _die_with_parent() -> None:
    """Pool initializer: on Linux, the kernel sends this worker SIGTERM when its parent dies (even kill -9)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def tile_slides(
    inputs: list[str],
    out: str | os.PathLike,
    tile_params: list[TileParams] | TileParams,
    *,
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
    clean_temp(out)
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
    write_previews_sheet(rows, out, tags)
    return rows


def write_previews_sheet(rows: list[dict], out: Path, tags: list[str]) -> None:
    """``OUT/previews.html`` and ``OUT/previews.png``: the preview of every slide and resolution of the run
    (a skipped slide shows its reason)."""
    items = []
    for r in rows:
        sid = r.get("slide_id") or Path(str(r.get("path", "?"))).name
        for t in tags:
            png = _paths(out, sid, t)["preview"]
            ok = r.get("status") in ("done", "cached") and png.is_file()
            tiles = r.get(f"tiles_{t}")
            items.append({"slide_id": f"{sid} {t}", "png": png if ok else None,
                          "caption": (f"{tiles} tiles" if tiles is not None else "") if ok else r.get("reason", "")})
    if items:
        preview.write_contact_sheet(items, out, name="previews")


def _run_pool(jobs, workers, bar) -> dict[str, dict]:
    """Run jobs in a process pool; a slide that crashes its worker is retried alone, then reported."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    results: dict[str, dict] = {}
    pending = list(jobs)
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent)
    try:
        futs = {ex.submit(_worker, j): j for j in pending}
        crashed = []
        for fut in as_completed(futs):
            j = futs[fut]
            try:
                results[j[0]] = fut.result()
                bar.update(1)
            except BrokenProcessPool:
                crashed.append(j)
    except BaseException:  # Ctrl-C, SIGTERM (raised as SystemExit by the CLI): end the workers with us
        for proc in list((ex._processes or {}).values()):
            proc.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()
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
    doc = {"counts": count_statuses(rows), "tags": tags, "slides": [{k: r.get(k) for k in fields} for r in rows]}
    write_summary_files(rows, out, "summary", fields, doc)


def format_summary(rows: list[dict], tags: list[str]) -> str:
    """Human-readable per-run summary."""
    def details(r):
        tiles = ", ".join(f"{t}: {r.get(f'tiles_{t}')}" for t in tags if r.get(f"tiles_{t}") is not None)
        return r["slide_id"] + (f" ({tiles})" if tiles else "")

    head = count_line(rows) + (f" (each tiled at {', '.join(tags)})" if len(tags) > 1 else "")
    return "\n".join([head] + format_rows(rows, details))
