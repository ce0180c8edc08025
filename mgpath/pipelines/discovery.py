"""Finding slide files: from files and folders, and by slide id.

One rule for every command: a folder contributes the slide files directly in it; with ``recursive`` (the
``--recursive`` flag of ``mgpath tile``, ``extract``, ``prepare`` and ``heatmap``) its subfolders too."""

from __future__ import annotations

from pathlib import Path

from mgpath.slides.reader import slide_id_from_path

__all__ = ["SLIDE_EXTENSIONS", "find_slides", "index_slides"]

#: file endings treated as slides when a folder is given
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")


def _problem(slide_id: str, path, reason: str) -> dict:
    return {"slide_id": slide_id, "path": str(path), "status": "skipped", "reason": reason}


def find_slides(inputs: list[str], recursive: bool = False) -> tuple[list[str], list[dict]]:
    """Slide files from files and folders. Returns ``(paths, problems)`` where problems are summary rows.

    Folders contribute their files ending in :data:`SLIDE_EXTENSIONS` (searched recursively with
    ``recursive``); a slide id seen twice is reported once as a duplicate and the second file skipped.
    """
    paths, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(str(q) for q in it if q.is_file() and q.name.lower().endswith(SLIDE_EXTENSIONS))
            if not found:
                problems.append(_problem(p.name, p, f"no slide files ({', '.join(SLIDE_EXTENSIONS)}) in folder {p}"))
            paths += found
        elif p.is_file():
            paths.append(str(p))
        else:
            problems.append(_problem(slide_id_from_path(p), p, f"{p} does not exist"))
    seen: dict[str, str] = {}
    unique = []
    for q in paths:
        sid = slide_id_from_path(q)
        if sid in seen:
            problems.append(_problem(sid, q, f"duplicate slide id {sid!r} (also {seen[sid]}); rename one of the files"))
            continue
        seen[sid] = q
        unique.append(q)
    return unique, problems


def index_slides(slides_dir: str | None, recursive: bool = False) -> dict[str, str]:
    """``{slide_id: path}`` of the slide files in ``slides_dir`` (subfolders too with ``recursive``; first wins)."""
    out: dict[str, str] = {}
    if slides_dir:
        root = Path(slides_dir)
        for p in sorted(root.rglob("*") if recursive else root.iterdir()):
            if p.is_file() and p.name.lower().endswith(SLIDE_EXTENSIONS):
                out.setdefault(slide_id_from_path(p), str(p))
    return out
