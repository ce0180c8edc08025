"""Per-run summaries: one row per slide written as CSV and JSON beside the outputs, and a text rendering."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vapt.fileio.atomic import printable, write_bytes_atomic

__all__ = ["STATUSES", "count_line", "count_statuses", "format_rows", "write_summary_files"]

STATUSES = ("done", "cached", "skipped")


def count_statuses(rows: list[dict]) -> dict[str, int]:
    """``{"done": n, "cached": n, "skipped": n}``."""
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def count_line(rows: list[dict], group=None, unit: str = "files") -> str:
    """The head line of a summary, slides and magnifications counted apart.

    ``group(row)`` names the row's magnification (or other group; None: one group). One group:
    ``4 slides: 4 done, 0 cached, 0 skipped``; several: ``4 slides x 2 magnifications (10x, 5x) = 8 files:
    8 done, 0 cached, 0 skipped``.
    """
    n = count_statuses(rows)
    slides = len({r["slide_id"] for r in rows})
    groups = sorted({g for g in (group(r) for r in rows) if g}) if group is not None else []
    what = f"{slides} slide{'s' if slides != 1 else ''}"
    if len(groups) > 1:
        what += f" x {len(groups)} magnifications ({', '.join(groups)}) = {len(rows)} {unit}"
    return f"{what}: {n['done']} done, {n['cached']} cached, {n['skipped']} skipped"


def write_summary_files(rows: list[dict], out: Path, name: str, fields: list[str], json_doc=None) -> Path:
    """Write ``out/<name>.csv`` (``fields`` columns, empty for None) and ``out/<name>.json`` atomically.

    ``json_doc`` is what the JSON holds (default: the rows); returns the CSV's path. Text cells go through
    :func:`vapt.fileio.atomic.printable`, so a file name that is not valid UTF-8 never stops the summary.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else _text(r.get(k))) for k in fields})
    out = Path(out)
    write_bytes_atomic(out / f"{name}.csv", buf.getvalue().encode())
    doc = rows if json_doc is None else json_doc
    write_bytes_atomic(out / f"{name}.json", json.dumps(_text(doc), indent=1, default=str).encode())
    return out / f"{name}.csv"


def _text(v):
    """``v`` with every string made printable (nested lists and dicts too)."""
    if isinstance(v, str):
        return printable(v)
    if isinstance(v, dict):
        return {printable(k) if isinstance(k, str) else k: _text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_text(x) for x in v]
    return v


def format_rows(rows: list[dict], details) -> list[str]:
    """One text line per row: status, ``details(row)`` (e.g. slide id and tile counts), and why it was skipped."""
    lines = []
    for r in rows:
        why = f" - {r['reason']}" if r["status"] == "skipped" else ""
        lines.append(printable(f"  {r['status']:<8} {details(r)}{why}"))
    return lines
