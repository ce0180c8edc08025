"""Tissue segmentation on a low-resolution image of the slide, as polygons with holes.

Pipeline (CLAM-like, in physical units): whole slide at ``seg_mpp`` um/px -> HSV saturation (optionally
masking near-black pixels) -> median blur -> threshold (fixed, or Otsu with a floor) -> morphological close ->
contours with holes (OpenCV ``RETR_CCOMP``) -> tissue pieces smaller than ``min_tissue_mm2`` and holes
smaller than ``min_hole_mm2`` dropped. Polygons are returned in level-0 pixel coordinates.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mgpath.slides.masks import final_mask, mask_polygons, median_vote, rasterize, work_box
from vapt.fileio.atomic import write_bytes_atomic

__all__ = [
    "TissueParams",
    "TissuePolygon",
    "Tissue",
    "segment_tissue",
    "segment_image",
    "rasterize",
    "write_geojson",
    "read_geojson",
    "write_preview",
]


@dataclass
class TissueParams:
    """Segmentation settings; sizes are physical so they mean the same at any scan resolution.

    Attributes
    ----------
    seg_mpp : um/px of the image segmented (4 um/px is about 2.5x); coarsened if the image would exceed
        ``max_side`` pixels.
    threshold : ``"fixed"`` (saturation > ``min_saturation``, CLAM/MGPATH-preset style, the default) or
        ``"otsu"`` (Otsu on saturation, never below ``min_saturation``; can split two-toned stains such as IHC
        into "tissue" and "background").
    min_saturation : the fixed threshold (0-255), and the floor under Otsu.
    median_um : median blur kernel width in um (rounded to an odd pixel count at ``seg_mpp``).
    close_um : morphological closing kernel width in um (0 disables).
    min_tissue_mm2 : tissue pieces with a smaller area (holes subtracted) are dropped.
    min_hole_mm2 : holes with a smaller area are filled.
    black_value : pixels with HSV value below this are ignored (pen / black borders); 0 disables.
    min_side, max_side : bounds on the segmentation image's longer side in pixels (a small slide is segmented
        finer than ``seg_mpp``, never finer than its level 0; a huge one coarser).
    """

    seg_mpp: float = 4.0
    threshold: str = "fixed"
    min_saturation: int = 15
    median_um: float = 32.0
    close_um: float = 32.0
    min_tissue_mm2: float = 0.05
    min_hole_mm2: float = 0.01
    black_value: int = 30
    min_side: int = 1024
    max_side: int = 8192

    def __post_init__(self):
        if self.threshold not in ("otsu", "fixed"):
            raise ValueError(
                f"threshold must be 'otsu' or 'fixed', got {self.threshold!r} (mgpath/slides/tissue.py)"
            )
        if self.seg_mpp <= 0:
            raise ValueError(f"seg_mpp must be > 0, got {self.seg_mpp}")


@dataclass
class TissuePolygon:
    """One tissue piece in level-0 pixels: ``exterior`` ``(K, 2)`` float and ``holes`` list of ``(K_i, 2)``."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    area_mm2: float = 0.0


@dataclass
class Tissue:
    """Segmentation result.

    Attributes
    ----------
    polygons : tissue pieces (level-0 pixels), largest first.
    mask : ``(h, w)`` bool, the kept polygons rasterised at the segmentation resolution.
    downsample : level-0 pixels per mask pixel (``(sx, sy)``; equal up to rounding).
    image : ``(h, w, 3)`` uint8 RGB the mask was computed on (used for previews).
    threshold : the saturation threshold applied.
    """

    polygons: list[TissuePolygon]
    mask: np.ndarray
    downsample: tuple[float, float]
    image: np.ndarray
    threshold: float

    @property
    def area_mm2(self) -> float:
        return float(sum(p.area_mm2 for p in self.polygons))


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def segment_image(rgb: np.ndarray, mpp: float, params: TissueParams | None = None):
    """Segment an RGB image ``(h, w, 3)`` uint8 at ``mpp`` um/px.

    Returns
    -------
    (polygons in image pixel units with pixel ``(i, j)`` the square ``[j, j+1) x [i, i+1)``, mask (h, w) bool
    of the kept tissue, threshold used). The polygons enclose exactly the mask's pixels.
    """
    import cv2

    p = params or TissueParams()
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    if p.black_value > 0:
        sat = np.where(hsv[..., 2] < p.black_value, 0, sat).astype(np.uint8)
    k = min(_odd(p.median_um / mpp), 255)
    c = _odd(p.close_um / mpp) if p.close_um > 0 else 0  # odd: an even kernel's closing shifts the mask
    full_shape = sat.shape
    y0 = x0 = 0
    if p.threshold == "fixed":  # work on the box around the saturated pixels only: the same result, less work
        thr = float(p.min_saturation)
        over = sat > thr
        box = work_box(over, k // 2 if k > 1 else 0, c // 2 if c > 1 else 0)
        if box is None:
            return [], np.zeros(full_shape, bool), thr
        y0, y1, x0, x1 = box
        mask = median_vote(over[y0:y1, x0:x1], k)
    else:
        if k > 1:
            sat = cv2.medianBlur(np.ascontiguousarray(sat), k)
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        thr = max(float(otsu), float(p.min_saturation))
        mask = (sat > thr).astype(np.uint8)
    if c > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (c, c))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    px_mm2 = (mpp / 1000.0) ** 2
    mask = final_mask(mask, p.min_tissue_mm2 / px_mm2, p.min_hole_mm2 / px_mm2)
    polys = [
        TissuePolygon(
            np.asarray(g.exterior.coords, np.float64)[:-1],
            [np.asarray(r.coords, np.float64)[:-1] for r in g.interiors],
            g.area * px_mm2,
        )
        for g in mask_polygons(mask, (x0, y0), full_shape)
    ]
    polys.sort(key=lambda q: -q.area_mm2)
    if mask.shape != full_shape:
        full = np.zeros(full_shape, bool)
        full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
        mask = full
    return polys, mask, thr


def segment_tissue(slide, params: TissueParams | None = None) -> Tissue:
    """Segment the tissue of a :class:`~mgpath.slides.reader.Slide` (needs its MPP).

    The segmentation image is ``seg_mpp`` um/px, finer on small slides so that its longer side has at least
    ``min_side`` pixels, coarser when it would exceed ``max_side``. Returns polygons in level-0 pixels that
    enclose exactly the mask's pixels.
    """
    p = params or TissueParams()
    w0, h0 = slide.dimensions
    extent_um = slide.mpp * max(w0, h0)
    seg_mpp = min(p.seg_mpp, max(slide.mpp, extent_um / max(1, p.min_side)))
    seg_mpp = max(seg_mpp, extent_um / p.max_side)
    img = slide.read_at_downsample(seg_mpp / slide.mpp, max_side=p.max_side)
    h, w = img.shape[:2]
    sx, sy = w0 / w, h0 / h
    mpp_img = slide.mpp * (sx + sy) / 2
    polys, mask, thr = segment_image(img, mpp_img, p)
    scale = np.array([sx, sy])
    for poly in polys:
        poly.exterior = poly.exterior * scale
        poly.holes = [hh * scale for hh in poly.holes]
    return Tissue(polys, mask, (sx, sy), img, thr)


# -- output ------------------------------------------------------------------------------------------
def _ring(a: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(a)]
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def write_geojson(
    polygons: list[TissuePolygon],
    path: str | os.PathLike,
    slide_id: str = "",
    params: TissueParams | None = None,
) -> None:
    """Write tissue polygons as a GeoJSON FeatureCollection in level-0 pixels (QuPath: File > Import objects).

    One ``Polygon`` feature per piece (exterior ring then hole rings), classified ``Tissue`` as a QuPath
    annotation.
    """
    feats = []
    for i, poly in enumerate(polygons):
        if len(poly.exterior) < 3:
            continue
        rings = [_ring(poly.exterior)] + [_ring(h) for h in poly.holes if len(h) >= 3]
        feats.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-tissue-{i}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "name": f"tissue {i}",
                    "classification": {"name": "Tissue", "color": [0, 160, 80]},
                    "area_mm2": round(float(poly.area_mm2), 6),
                },
            }
        )
    doc = {
        "type": "FeatureCollection",
        "features": feats,
        "properties": {
            "slide_id": slide_id,
            "units": "level-0 pixels",
            "params": asdict(params) if params else None,
        },
    }
    write_bytes_atomic(path, json.dumps(doc).encode())


def read_geojson(path: str | os.PathLike) -> list[TissuePolygon]:
    """Read polygons written by :func:`write_geojson` (or any Polygon/MultiPolygon GeoJSON, e.g. from QuPath)."""
    doc = json.loads(Path(path).read_text())
    feats = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
    out = []
    for f in feats:
        g = f.get("geometry") or {}
        polys = (
            [g["coordinates"]]
            if g.get("type") == "Polygon"
            else g.get("coordinates", [])
            if g.get("type") == "MultiPolygon"
            else []
        )
        for rings in polys:
            ext = np.asarray(rings[0], np.float64)[:-1]
            holes = [np.asarray(r, np.float64)[:-1] for r in rings[1:]]
            out.append(TissuePolygon(ext, holes, float((f.get("properties") or {}).get("area_mm2", 0.0))))
    return out


def write_preview(
    tissue: Tissue,
    path: str | os.PathLike,
    coords: np.ndarray | None = None,
    tile_size_level0: float | None = None,
    max_side: int = 2048,
) -> None:
    """PNG preview: the segmentation image with tissue contours (green), holes (blue) and tiles (red boxes).

    ``coords`` ``(N, 2)`` level-0 top-left corners of tiles of ``tile_size_level0`` px.
    """
    import cv2

    img = np.ascontiguousarray(tissue.image.copy())
    sx, sy = tissue.downsample
    f = min(1.0, max_side / max(img.shape[:2]))
    if f < 1.0:
        img = cv2.resize(
            img, (max(1, int(img.shape[1] * f)), max(1, int(img.shape[0] * f))), interpolation=cv2.INTER_AREA
        )
    sx, sy = sx / f, sy / f
    th = max(1, int(round(max(img.shape[:2]) / 800)))
    if coords is not None and len(coords) and tile_size_level0:
        c = np.asarray(coords, np.float64)
        x0 = np.round(c[:, 0] / sx).astype(np.int32)
        y0 = np.round(c[:, 1] / sy).astype(np.int32)
        x1 = np.round((c[:, 0] + tile_size_level0) / sx).astype(np.int32) - 1
        y1 = np.round((c[:, 1] + tile_size_level0) / sy).astype(np.int32) - 1
        for a, b, cc, d in zip(x0, y0, x1, y1):
            cv2.rectangle(img, (int(a), int(b)), (int(cc), int(d)), (220, 30, 30), 1)
    scale = np.array([sx, sy])

    def px(a):
        return np.round(np.asarray(a) / scale - 0.5).astype(np.int32).reshape(-1, 1, 2)

    for poly in tissue.polygons:
        cv2.polylines(img, [px(poly.exterior)], True, (0, 170, 60), th + 1)
        for hh in poly.holes:
            cv2.polylines(img, [px(hh)], True, (30, 60, 220), th + 1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode preview PNG for {path}")
    write_bytes_atomic(path, buf.tobytes())
