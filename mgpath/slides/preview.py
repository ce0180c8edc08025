"""Previews a pathologist can check: the slide at a readable size with tissue contours, holes and the tile grid,
and a contact sheet of every slide of a run.

``render_preview`` draws on a fresh thumbnail of the slide (longest side ``max_side`` px, 2048 by default),
not on the small segmentation image: tissue outlines in green, hole outlines in blue, the kept tiles as thin
red boxes over a light red wash, and a caption bar (slide id, resolution, tissue area, tiles).
``write_contact_sheet`` lays out the previews of a run as ``previews.html`` (one card per slide, each
linking to its full-size PNG) and one PNG grid.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from vapt.fileio.atomic import drawable, printable, write_bytes_atomic, write_text_atomic

__all__ = ["encode_png", "render_preview", "write_contact_sheet", "write_preview"]

GREEN, BLUE, RED = (0, 170, 60), (30, 60, 220), (220, 30, 30)
_SHIFT = 4  # sub-pixel bits for OpenCV drawing


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB uint8 ``(h, w, 3)`` -> PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode a PNG")
    return buf.tobytes()


def _pts(a: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    p = np.asarray(a, np.float64) / np.asarray(scale)
    return np.round(p * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def caption_bar(img: np.ndarray, lines: list[str], scale: float | None = None) -> np.ndarray:
    """``img`` with a white bar of text lines on top (font scaled to the image width unless ``scale`` is given;
    lines longer than the width are wrapped)."""
    import textwrap

    import cv2

    w = img.shape[1]
    scale = max(0.4, min(1.2, w / 1400)) if scale is None else scale
    width = max(10, int(w / (19 * scale)))  # characters per line at this font scale
    lines = [part for line in lines for part in (textwrap.wrap(line, width) or [""])]
    lh = int(30 * scale) + 6
    bar = np.full((lh * len(lines) + 8, w, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(bar, drawable(text), (8, lh * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20),
                    max(1, round(2 * scale)), cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


def render_preview(
    thumbnail: np.ndarray,
    slide_dims: tuple[int, int],
    polygons: list | None = None,
    coords: np.ndarray | None = None,
    tile_size_level0: float | None = None,
    title: list[str] | None = None,
) -> np.ndarray:
    """Draw tissue, holes and tiles over a thumbnail.

    Parameters
    ----------
    thumbnail : ``(h, w, 3)`` uint8 RGB of the whole slide (e.g. ``Slide.thumbnail(2048)``).
    slide_dims : level-0 ``(W, H)``.
    polygons : :class:`~mgpath.slides.tissue.TissuePolygon` list in level-0 pixels.
    coords : ``(N, 2)`` level-0 top-left corners of tiles of ``tile_size_level0`` px.
    title : caption lines drawn in a bar above the image.

    Returns
    -------
    ``(h + bar, w, 3)`` uint8 RGB.
    """
    import cv2

    img = np.ascontiguousarray(thumbnail.copy())
    h, w = img.shape[:2]
    scale = (slide_dims[0] / w, slide_dims[1] / h)
    th = max(1, round(max(h, w) / 700))
    if coords is not None and len(coords) and tile_size_level0:
        c = np.asarray(coords, np.float64)
        x0 = c[:, 0] / scale[0]
        y0 = c[:, 1] / scale[1]
        x1, y1 = x0 + tile_size_level0 / scale[0], y0 + tile_size_level0 / scale[1]
        wash = img.copy()
        for a, b, cc, d in zip(x0, y0, x1, y1):
            cv2.rectangle(wash, (int(a), int(b)), (int(np.ceil(cc)) - 1, int(np.ceil(d)) - 1), RED, -1)
        img = cv2.addWeighted(img, 0.82, wash, 0.18, 0)
        if (x1 - x0).mean() >= 4:  # tile borders only where a tile is at least a few pixels wide
            f = 1 << _SHIFT
            for a, b, cc, d in zip(x0, y0, x1, y1):
                cv2.rectangle(img, (int(a * f), int(b * f)), (int(cc * f), int(d * f)), RED, 1, cv2.LINE_AA,
                              _SHIFT)
    for poly in polygons or []:
        cv2.polylines(img, [_pts(poly.exterior, scale)], True, GREEN, th + 1, cv2.LINE_AA, _SHIFT)
        for hole in poly.holes:
            cv2.polylines(img, [_pts(hole, scale)], True, BLUE, th + 1, cv2.LINE_AA, _SHIFT)
    return caption_bar(img, title) if title else img


def write_preview(
    slide,
    path: str | os.PathLike,
    tissue=None,
    coords: np.ndarray | None = None,
    tile_size_level0: float | None = None,
    max_side: int = 2048,
    tag: str = "",
    thumbnail: np.ndarray | None = None,
) -> np.ndarray:
    """Read a ``max_side`` thumbnail of ``slide`` (:class:`~mgpath.slides.reader.Slide`), draw ``tissue`` (a
    :class:`~mgpath.slides.tissue.Tissue`) and the tiles, write the PNG atomically; returns the picture.

    ``thumbnail`` reuses one already read (e.g. for several magnifications of one slide)."""
    thumb = slide.thumbnail(max_side) if thumbnail is None else thumbnail
    lines = [f"{slide.slide_id}  {slide.dimensions[0]} x {slide.dimensions[1]} px"
             + (f"  {slide.mpp:.3g} um/px" if slide.has_mpp else "")]
    info = []
    if tissue is not None:
        holes = sum(len(p.holes) for p in tissue.polygons)
        info.append(f"tissue {tissue.area_mm2:.3g} mm^2 in {len(tissue.polygons)} pieces, {holes} holes")
    if coords is not None:
        info.append(f"{len(coords)} tiles{f' at {tag}' if tag else ''}"
                    + (f" of {tile_size_level0:.0f} level-0 px" if tile_size_level0 else ""))
    if info:
        lines.append("; ".join(info))
    img = render_preview(thumb, slide.dimensions, tissue.polygons if tissue is not None else None, coords,
                         tile_size_level0, lines)
    write_bytes_atomic(path, encode_png(img))
    return img


def write_contact_sheet(
    items: list[dict],
    out_dir: str | os.PathLike,
    name: str = "previews",
    cell: int = 480,
    columns: int = 4,
    max_cells: int = 240,
    title: str = "Slide previews",
    legend: str = "green: tissue outline, blue: holes, red: kept tiles.",
    key: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """All previews of a run on one page and one PNG.

    Parameters
    ----------
    items : ``{"slide_id", "png" (path of its preview), "caption" (optional text), "thumb" (optional: a
        smaller picture shown instead, still linking to "png")}`` per slide; a missing PNG shows as a grey
        cell naming the slide (e.g. a slide that failed).
    out_dir : where ``<name>.html`` (links relative to it) and ``<name>.png`` are written.
    max_cells : the PNG grid shows the first ``max_cells`` items (the page shows all).
    title, legend : the page's heading and the line under it (also drawn above the PNG grid).
    key : an RGB strip (e.g. a colour key) drawn between the legend and the grid of the PNG.

    Returns
    -------
    (html path, png path)
    """
    import cv2

    out_dir = Path(out_dir)
    cards, cells = [], []
    for it in items:
        png = Path(it["png"]) if it.get("png") else None
        shown = Path(it["thumb"]) if it.get("thumb") else png
        cap = str(it.get("caption", ""))
        if png is not None and png.is_file() and shown.is_file():
            rel, rel_shown = os.path.relpath(png, out_dir), os.path.relpath(shown, out_dir)
            cards.append(
                f'<figure><a href="{html.escape(printable(rel))}"><img src="{html.escape(printable(rel_shown))}" '
                f'loading="lazy"></a><figcaption><b>{html.escape(printable(it["slide_id"]))}</b> '
                f"{html.escape(printable(cap))}</figcaption></figure>"
            )
            if len(cells) >= max_cells:
                continue
            # decoded from bytes read by Python: OpenCV's own file opening fails on names that are not UTF-8
            im = cv2.cvtColor(cv2.imdecode(np.frombuffer(shown.read_bytes(), np.uint8), cv2.IMREAD_COLOR),
                              cv2.COLOR_BGR2RGB)
            f = cell / max(im.shape[:2])
            im = cv2.resize(im, (max(1, int(im.shape[1] * f)), max(1, int(im.shape[0] * f))),
                            interpolation=cv2.INTER_AREA)
        else:
            cards.append(f"<figure class=missing><b>{html.escape(printable(it['slide_id']))}</b> no preview "
                         f"{html.escape(printable(cap))}</figure>")
            if len(cells) >= max_cells:
                continue
            im = np.full((cell // 2, cell, 3), 200, np.uint8)
            cv2.putText(im, drawable(f"no preview {cap}")[:48], (10, cell // 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        (60, 60, 60), 1, cv2.LINE_AA)
        c = np.full((cell, cell, 3), 255, np.uint8)
        c[: im.shape[0], : im.shape[1]] = im
        c = caption_bar(c, [f"{it['slide_id']} {cap}"[:48]], scale=max(0.5, cell / 800))
        cells.append(c)
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:12px}figure{display:inline-block;width:31%;margin:0 1% 16px 0;"
        "vertical-align:top}img{width:100%;border:1px solid #ccc}.missing{background:#eee;padding:24px}"
        f"</style><h1>{html.escape(title)}</h1><p>{html.escape(legend)} "
        f"{len(items)} slides" + (f"; the PNG grid shows the first {max_cells}" if len(items) > max_cells else "")
        + ".</p>" + "".join(cards)
    )
    html_path, png_path = out_dir / f"{name}.html", out_dir / f"{name}.png"
    write_text_atomic(html_path, page)
    if cells:
        ch = max(c.shape[0] for c in cells)
        rows = []
        columns = min(columns, len(cells))
        for r in range(0, len(cells), columns):
            row = [np.pad(c, ((0, ch - c.shape[0]), (0, 4), (0, 0)), constant_values=255) for c in cells[r:r + columns]]
            row += [np.full_like(row[0], 255)] * (columns - len(row))
            rows.append(np.concatenate(row, axis=1))
        grid = np.concatenate(rows, axis=0)
        if key is not None:
            strip = np.full((key.shape[0], grid.shape[1], 3), 255, np.uint8)
            strip[:, : min(key.shape[1], grid.shape[1])] = key[:, : grid.shape[1]]
            grid = np.concatenate([strip, grid], axis=0)
        header = caption_bar(caption_bar(grid, [legend], scale=0.6), [title], scale=0.9)
        write_bytes_atomic(png_path, encode_png(header))
    return html_path, png_path
