"""Feature-extraction jobs: one per coordinates file, with the slide it reads and the features file it writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mgpath.io import read_coords
from mgpath.pipelines.discovery import index_slides
from vapt.fileio.atomic import confined

__all__ = ["SlideJob", "find_jobs"]


@dataclass
class SlideJob:
    """One slide to encode: where to read tiles and where to write features."""

    slide_id: str
    slide_path: str
    coords_path: str
    out_path: str
    coords: np.ndarray = field(repr=False)
    attrs: dict = field(repr=False)
    mpp: float | None = None

    @property
    def n(self) -> int:
        return len(self.coords)


def _first_duplicate(xy: np.ndarray) -> tuple[int, int] | None:
    """Row indices ``(i, j)``, ``i < j``, of the first repeated coordinate pair in ``(N, 2)`` ``xy``, or None."""
    if len(xy) < 2:
        return None
    _, first, inverse = np.unique(xy, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(xy)))
    if len(repeated) == 0:
        return None
    j = int(repeated[0])
    return int(first[inverse[j]]), j


def find_jobs(
    coords: str | os.PathLike, out: str | os.PathLike, slides: str | None = None, mpp: float | None = None,
    recursive: bool = False,
) -> tuple[list[SlideJob], list[dict]]:
    """Jobs from a coordinates folder; returns ``(jobs, problems)`` (problems are summary rows).

    ``coords`` is either a ``mgpath tile`` output root (with ``<tag>/coords/*.h5``; features go to
    ``out/<tag>/<slide_id>.h5``) or a folder of coordinate h5 files from mgpath, CLAM or TRIDENT (features go
    to ``out/<slide_id>.h5``). Slides are looked up by id under ``slides``, else through the ``slide_path``
    attribute mgpath stores; ``recursive`` searches the subfolders of ``slides`` too.
    """
    root = Path(coords)
    if not root.is_dir():
        raise FileNotFoundError(f"--coords {root} is not a folder of coordinate h5 files")
    groups: list[tuple[Path, Path]] = []
    tagged = sorted(p for p in root.glob("*/coords") if p.is_dir())
    if tagged:
        groups = [(p, Path(out) / p.parent.name) for p in tagged]
    elif (root / "coords").is_dir():
        groups = [(root / "coords", Path(out))]
    else:
        groups = [(root, Path(out))]
    index = index_slides(slides, recursive)
    jobs, problems = [], []
    claimed: dict[str, str] = {}  # features file -> the coordinates file that makes it
    for cdir, odir in groups:
        files = sorted(cdir.glob("*.h5"))
        if not files:
            problems.append(
                {
                    "slide_id": cdir.name,
                    "status": "skipped",
                    "reason": f"no .h5 files in {cdir}",
                    "path": str(cdir),
                }
            )
        for f in files:
            try:
                xy, attrs = read_coords(f)
            except ValueError as e:
                problems.append({"slide_id": f.stem, "status": "skipped", "reason": str(e), "path": str(f)})
                continue
            sid = attrs["slide_id"]
            try:  # the id comes from the file's attributes: never let it lead out of --out
                out_path = str(confined(odir, f"{sid}.h5", what=f"features file of {f}"))
            except ValueError as e:
                problems.append({"slide_id": str(sid), "status": "skipped", "path": str(f), "reason": str(e)})
                continue
            sp = index.get(sid)
            if sp is None and not slides:
                sp = attrs["raw"].get("slide_path")
            if sp is None or not Path(sp).exists():
                where = (f"under --slides {slides}{'' if recursive else ' (--recursive searches its subfolders)'}"
                         if slides else "(pass --slides DIR)")
                problems.append(
                    {
                        "slide_id": sid,
                        "status": "skipped",
                        "path": str(f),
                        "reason": f"slide for {f.name} not found {where}",
                    }
                )
                continue
            if out_path in claimed:
                problems.append({"slide_id": sid, "status": "skipped", "path": str(f), "reason": (
                    f"duplicate slide id {sid!r}: {f} and {claimed[out_path]} would write the same {out_path}; "
                    "remove or rename one of them")})
                continue
            dup = _first_duplicate(xy)
            if dup is not None:
                problems.append({"slide_id": sid, "status": "skipped", "path": str(f), "reason": (
                    f"{f} lists tile {tuple(int(v) for v in xy[dup[0]])} twice (rows {dup[0]} and {dup[1]}); "
                    "regenerate the coordinates (mgpath tile) or drop the duplicate rows")})
                continue
            claimed[out_path] = str(f)
            jobs.append(SlideJob(sid, str(sp), str(f), out_path, xy, attrs, mpp))
    return jobs, problems
