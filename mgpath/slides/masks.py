"""Binary-mask operations of the tissue segmentation: the median blur as a vote, the box worth working on,
small holes and pieces removed, pixel-edge outlines, and polygons rasterised back to a mask.

Pure array geometry (OpenCV, shapely); :mod:`mgpath.slides.tissue` chains them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["final_mask", "mask_polygons", "median_vote", "rasterize", "work_box"]


def final_mask(mask: np.ndarray, min_piece_px: float, min_hole_px: float) -> np.ndarray:
    """Fill holes under ``min_hole_px`` pixels, then drop pieces under ``min_piece_px`` pixels.

    Tissue is 8-connected and background 4-connected (the pair OpenCV's contours follow), so every kept
    pixel set has a valid pixel-edge outline. Areas are pixel counts (a piece's area excludes its holes).
    Components are counted inside the bounding boxes of the borders OpenCV traces, and a piece whose outline
    already proves it large enough is not counted at all: the result is that of labelling the whole mask.
    """
    m = mask.astype(np.uint8)
    if min_hole_px > 0:
        _fill_small_holes(m, min_hole_px)
    _drop_small_pieces(m, min_piece_px)
    return m.view(bool)


#: above this many components to count one by one, the whole mask is labelled at once
_MAX_BOXES = 512


def _borders(m: np.ndarray) -> tuple[list, np.ndarray]:
    """OpenCV's two-level borders of ``m`` (uint8 ``(h, w)``) as if framed by background: ``(contours,
    hierarchy (K, 4))`` in ``m``'s pixels; outer borders have parent -1, holes are their children."""
    import cv2

    framed = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hier = cv2.findContours(framed, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(-1, -1))
    return list(contours), (hier[0] if hier is not None else np.zeros((0, 4), np.int32))


def _fill_small_holes(m: np.ndarray, min_px: float) -> None:
    """Set to 1 the background components of ``m`` (4-connected, not touching its border) under ``min_px``.

    Each hole lies strictly inside the bounding box of its border, so labelling that box finds it whole (and
    any hole nested deeper); a component of the box that does not touch the box's edge is a whole component
    of ``m`` that does not touch ``m``'s edge.
    """
    import cv2

    contours, hier = _borders(m)
    boxes = [cv2.boundingRect(c) for c, hh in zip(contours, hier) if hh[3] != -1]
    if len(boxes) > _MAX_BOXES or sum(w * h for *_, w, h in boxes) > m.size // 2:
        boxes = [(0, 0, m.shape[1], m.shape[0])]
    for x, y, w, h in boxes:
        sub = m[y : y + h, x : x + w]
        _, lab, st, _ = cv2.connectedComponentsWithStats(1 - sub, connectivity=4)
        sx, sy, sw, sh, area = st.T
        small = (area < min_px) & (sx > 0) & (sy > 0) & (sx + sw < w) & (sy + sh < h)
        small[0] = False  # label 0 is the tissue (background of the inverted box)
        _set_where_labelled(sub, lab, st, np.flatnonzero(small), 1)


def _drop_small_pieces(m: np.ndarray, min_px: float) -> None:
    """Set to 0 the 8-connected pieces of ``m`` under ``min_px`` pixels.

    A piece's pixels number at least the area of its outer border's polygon (through boundary pixel
    centres) less its holes' polygons; with a margin of every border's length, a piece that clears
    ``min_px`` that way is kept uncounted. The others are labelled inside their outer border's bounding box,
    where they lie whole.
    """
    import cv2

    contours, hier = _borders(m)
    doubtful = []
    for i, c in enumerate(contours):
        if hier[i][3] != -1:
            continue
        lower = cv2.contourArea(c) - cv2.arcLength(c, True)
        j = hier[i][2]
        while j != -1:
            lower -= cv2.contourArea(contours[j]) + cv2.arcLength(contours[j], True)
            j = hier[j][0]
        if lower < min_px:
            doubtful.append(c)
    if len(doubtful) > _MAX_BOXES:
        _, lab, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        drop = st[:, cv2.CC_STAT_AREA] < min_px
        drop[0] = False
        _set_where_labelled(m, lab, st, np.flatnonzero(drop), 0)
        return
    for c in doubtful:
        x, y, w, h = cv2.boundingRect(c)
        sub = m[y : y + h, x : x + w]
        _, lab, st, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
        k = lab[int(c[0, 0, 1]) - y, int(c[0, 0, 0]) - x]  # a border pixel of the piece
        if k and st[k, cv2.CC_STAT_AREA] < min_px:
            sub[lab == k] = 0


def _set_where_labelled(out: np.ndarray, lab: np.ndarray, stats: np.ndarray, ids: np.ndarray, value: int) -> None:
    """``out[lab in ids] = value``, inside each component's bounding box when there are few of them."""
    if len(ids) > 256:
        flag = np.zeros(len(stats), bool)
        flag[ids] = True
        out[flag[lab]] = value
        return
    for i in ids:
        x, y, w, h = (int(v) for v in stats[i, :4])
        sub = out[y : y + h, x : x + w]
        sub[lab[y : y + h, x : x + w] == i] = value


def mask_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None) -> list:
    """Pixel-edge outlines of a bool mask ``(h, w)``: valid shapely Polygons in pixel units, pixel ``(i, j)``
    being the square ``[j, j + 1) x [i, i + 1)``.

    ``mask`` may be a crop at ``offset=(x, y)`` of an image of ``shape=(H, W)`` (with no tissue outside the
    crop): the outlines are then those of the whole image.

    OpenCV's contours run through the centres of the boundary pixels; each piece (with its holes) is grown by
    half a pixel (mitred corners, a hair more so that pieces touching at a corner merge rather than make a
    self-touching ring) and clipped to the image, so the outline encloses exactly the mask's pixels.
    """
    import cv2
    import shapely
    from shapely.geometry import LineString, Point, Polygon, box

    h, w = mask.shape if shape is None else shape
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE,
                                           offset=tuple(int(v) for v in offset))
    if hierarchy is None:
        return []
    hier = hierarchy[0]
    frame = box(0, 0, w, h)

    def geom(c):
        pts = c[:, 0, :].astype(np.float64) + 0.5
        if len(pts) >= 3:
            return shapely.make_valid(Polygon(pts))
        return LineString(pts) if len(pts) == 2 else Point(pts[0])

    out = []
    for i, cnt in enumerate(contours):
        if hier[i][3] != -1:
            continue
        g = geom(cnt)
        j = hier[i][2]
        while j != -1:
            if len(contours[j]) >= 3:
                g = g.difference(geom(contours[j]))
            j = hier[j][0]
        g = g.buffer(0.5 + 1e-3, join_style="mitre", mitre_limit=2.0).intersection(frame)
        out += [q for q in getattr(g, "geoms", [g]) if isinstance(q, Polygon) and not q.is_empty]
    return out


def median_vote(over: np.ndarray, k: int) -> np.ndarray:
    """``medianBlur(sat, k) > thr`` as uint8 ``(h, w)`` from ``over = sat > thr`` (bool ``(h, w)``): the median
    of a ``k x k`` window exceeds ``thr`` exactly when at least ``(k * k + 1) / 2`` of its pixels do, a box sum
    (with the replicated border of OpenCV's median), several times faster than the median itself."""
    import cv2

    over = np.ascontiguousarray(over).view(np.uint8)
    if k <= 1:
        return over.copy()
    votes = cv2.boxFilter(over, cv2.CV_16U, (k, k), normalize=False, borderType=cv2.BORDER_REPLICATE)  # k <= 255
    return (votes >= (k * k + 1) // 2).astype(np.uint8)


def work_box(raw: np.ndarray, r_median: int, r_close: int) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the part of an image that a fixed-threshold segmentation needs, or None.

    ``raw`` ``(h, w)`` bool: pixels over the threshold before the median blur. A median over a
    ``(2 r_median + 1)`` window can only exceed the threshold within ``r_median`` of such a pixel; a closing
    with radius ``r_close`` never adds pixels outside the bounding box of its input and needs ``2 r_close + 1``
    pixels of context; the median needs ``r_median`` more. With that margin every step computed on the box
    equals the same step on the whole image restricted to the box, and the box keeps a ring of background, so
    holes and pieces are found as on the whole image.
    """
    rows, cols = np.flatnonzero(raw.any(axis=1)), np.flatnonzero(raw.any(axis=0))
    if len(rows) == 0:
        return None
    m = 2 * r_median + 2 * r_close + 2
    h, w = raw.shape
    return (max(0, rows[0] - m), min(h, rows[-1] + 1 + m), max(0, cols[0] - m), min(w, cols[-1] + 1 + m))


def rasterize(
    polygons: list,
    shape: tuple[int, int],
    downsample: float | tuple[float, float],
    pixel_centres: bool = True,
) -> np.ndarray:
    """Fill polygons (``exterior`` and ``holes`` rings, e.g. :class:`~mgpath.slides.tissue.TissuePolygon`; holes
    left empty) into a ``shape=(h, w)`` bool mask of ``downsample`` level-0 px per pixel.

    A pixel is set when its centre lies inside (even-odd rule over each polygon's rings, union over
    polygons). With ``pixel_centres`` the vertices are level-0 coordinates (pixel ``j`` spans
    ``[j * s, (j + 1) * s)``); otherwise they are mask pixel units already.
    """
    sx, sy = (downsample, downsample) if np.isscalar(downsample) else downsample
    if not pixel_centres:
        sx = sy = 1.0
    h, w = shape
    out = np.zeros((h, w), bool)
    yc = (np.arange(h) + 0.5) * sy
    for poly in polygons:
        rings = [np.asarray(poly.exterior, np.float64)] + [np.asarray(r, np.float64) for r in poly.holes]
        a = np.concatenate([r for r in rings if len(r) >= 3]) if rings else np.zeros((0, 2))
        b = np.concatenate([np.roll(r, -1, axis=0) for r in rings if len(r) >= 3]) if rings else a
        if len(a) == 0:
            continue
        lo, hi = max(0, int((a[:, 1].min() / sy) - 1)), min(h, int(a[:, 1].max() / sy) + 2)
        for i in range(lo, hi):
            y = yc[i]
            cross = (a[:, 1] <= y) != (b[:, 1] <= y)
            if not cross.any():
                continue
            t = (y - a[cross, 1]) / (b[cross, 1] - a[cross, 1])
            xs = np.sort(a[cross, 0] + t * (b[cross, 0] - a[cross, 0])) / sx - 0.5  # pixel index units
            for x0, x1 in zip(xs[0::2], xs[1::2]):
                j0, j1 = max(0, int(np.ceil(x0))), min(w, int(np.floor(x1)) + 1)
                if j1 > j0:
                    out[i, j0:j1] = True
    return out
