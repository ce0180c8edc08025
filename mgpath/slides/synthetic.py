"""Synthetic whole-slide images: pyramidal tiled TIFFs that OpenSlide opens as ``generic-tiff``.

Tissue is real pixels (``skimage.data.immunohistochemistry()``) pasted inside known ellipses (optionally with
elliptical holes) on a white background, so tests can compare segmentation against the ground truth. Every
level is generated tile by tile from the analytic region description, so a 50,000 x 50,000 slide is written
without ever holding a full level in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vapt.fileio.atomic import atomic_path

__all__ = [
    "Ellipse",
    "Region",
    "SyntheticSlide",
    "default_regions",
    "jitter_regions",
    "make_synthetic_slide",
    "TISSUE_CLASSES",
]

#: names of the available tissue-class variants (``tissue_class`` may be the index or the name)
TISSUE_CLASSES = ("ihc", "he_coarse", "blue_fine")


@dataclass(frozen=True)
class Ellipse:
    """An axis-aligned ellipse in level-0 pixels: centre ``(cx, cy)``, radii ``(rx, ry)``."""

    cx: float
    cy: float
    rx: float
    ry: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the points ``(x, y)`` (level-0 pixels, broadcastable) inside the ellipse."""
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1.0

    def polygon(self, n: int = 128) -> np.ndarray:
        """Closed ring ``(n + 1, 2)`` of level-0 ``(x, y)`` vertices, counter-clockwise in image axes."""
        t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        ring = np.stack([self.cx + self.rx * np.cos(t), self.cy - self.ry * np.sin(t)], axis=1)
        return np.concatenate([ring, ring[:1]], axis=0)

    def bbox(self) -> tuple[float, float, float, float]:
        return (self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry)


@dataclass(frozen=True)
class Region:
    """One tissue piece: an outer ellipse minus its holes."""

    outer: Ellipse
    holes: tuple[Ellipse, ...] = ()

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = self.outer.contains(x, y)
        for h in self.holes:
            inside &= ~h.contains(x, y)
        return inside


@dataclass
class SyntheticSlide:
    """What :func:`make_synthetic_slide` wrote: the file plus its ground truth."""

    path: Path
    dimensions: tuple[int, int]
    mpp: float | None
    level_dimensions: list[tuple[int, int]]
    regions: list[Region] = field(default_factory=list)
    tissue_class: str = "ihc"

    def mask(self, downsample: float = 1.0, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Ground-truth tissue mask ``(h, w)`` bool sampled at pixel centres, ``downsample`` level-0 px per pixel."""
        w0, h0 = self.dimensions
        if shape is None:
            shape = (max(1, int(round(h0 / downsample))), max(1, int(round(w0 / downsample))))
        h, w = shape
        ys = (np.arange(h) + 0.5) * (h0 / h)
        xs = (np.arange(w) + 0.5) * (w0 / w)
        return tissue_mask(self.regions, xs[None, :], ys[:, None])

    def polygons(self) -> list[dict]:
        """Ground truth as ``[{"exterior": (K,2), "holes": [(K,2), ...]}]`` in level-0 pixels."""
        return [
            {"exterior": r.outer.polygon(), "holes": [h.polygon() for h in r.holes]} for r in self.regions
        ]

    def tissue_area_px(self) -> float:
        """Analytic tissue area in level-0 pixels^2 (holes assumed inside their outer ellipse)."""
        return sum(
            math.pi * r.outer.rx * r.outer.ry - sum(math.pi * h.rx * h.ry for h in r.holes)
            for r in self.regions
        )


def tissue_mask(regions: list[Region], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Union of ``regions`` evaluated at level-0 points ``x``, ``y`` (broadcastable arrays) -> bool array."""
    out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), dtype=bool)
    for r in regions:
        out |= r.contains(x, y)
    return out


def default_regions(width: int, height: int, layout: str = "three") -> list[Region]:
    """Tissue layout in level-0 pixels for a ``width x height`` slide.

    ``"three"``: a large piece with a hole, a medium piece and a small piece. ``"one"``: one centred piece.
    ``"none"``: no tissue at all (a blank slide).
    """
    W, H = float(width), float(height)
    if layout == "none":
        return []
    if layout == "one":
        return [Region(Ellipse(0.5 * W, 0.5 * H, 0.3 * W, 0.3 * H))]
    if layout != "three":
        raise ValueError(
            f"unknown layout {layout!r}; use 'three', 'one' or 'none' (mgpath/slides/synthetic.py)"
        )
    return [
        Region(
            Ellipse(0.32 * W, 0.40 * H, 0.22 * W, 0.28 * H),
            holes=(Ellipse(0.30 * W, 0.42 * H, 0.06 * W, 0.07 * H),),
        ),
        Region(Ellipse(0.74 * W, 0.30 * H, 0.14 * W, 0.16 * H)),
        Region(Ellipse(0.72 * W, 0.78 * H, 0.12 * W, 0.09 * H)),
    ]


def jitter_regions(regions: list[Region], size: tuple[int, int], seed: int) -> list[Region]:
    """Move each piece (with its holes) by up to 4% of the slide and scale it by 0.9-1.1, reproducibly."""
    rng = np.random.default_rng(seed)
    out = []
    for r in regions:
        dx, dy = rng.uniform(-0.04, 0.04, 2) * np.asarray(size, float)
        k = float(rng.uniform(0.9, 1.1))
        o = r.outer

        def move(e: Ellipse, o: Ellipse = o, dx: float = dx, dy: float = dy, k: float = k) -> Ellipse:
            return Ellipse(o.cx + dx + (e.cx - o.cx) * k, o.cy + dy + (e.cy - o.cy) * k, e.rx * k, e.ry * k)

        out.append(Region(move(o), tuple(move(h) for h in r.holes)))
    return out


def _texture(tissue_class: str) -> tuple[np.ndarray, int]:
    """Tissue texture ``(T, T, 3)`` uint8 for a class plus its level-0 pixels per texture pixel."""
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry().astype(np.float32)  # (512, 512, 3)
    if tissue_class == "ihc":
        # a faint eosin-like counterstain so pale areas inside tissue still have some saturation
        tex = ihc * np.array([0.93, 0.80, 0.88], dtype=np.float32)
        return np.clip(tex, 0, 255).astype(np.uint8), 1
    gray = ihc.mean(axis=2, keepdims=True) / 255.0
    if tissue_class == "he_coarse":
        dark, light = np.array([80, 30, 120], np.float32), np.array([235, 150, 200], np.float32)
        return np.clip(dark + (light - dark) * gray, 0, 255).astype(np.uint8), 3
    if tissue_class == "blue_fine":
        dark, light = np.array([20, 40, 110], np.float32), np.array([150, 190, 230], np.float32)
        return np.clip(dark + (light - dark) * gray, 0, 255).astype(np.uint8), 1
    raise ValueError(f"unknown tissue_class {tissue_class!r}; choose one of {TISSUE_CLASSES} or an index")


def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Mirror-repeat indices into ``[0, n)`` so the repeated texture has no seams."""
    i = i % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _level_tiles(regions, tex, tex_scale, dims0, dims, tile):
    """Yield the ``(tile, tile, 3)`` uint8 tiles of one level, row-major, generated from the regions."""
    w0, h0 = dims0
    w, h = dims
    sx, sy = w0 / w, h0 / h
    T = tex.shape[0]
    white = np.full((tile, tile, 3), 255, np.uint8)
    boxes = [r.outer.bbox() for r in regions]
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            x_lo, y_lo, x_hi, y_hi = tx * sx, ty * sy, (tx + tile) * sx, (ty + tile) * sy
            if not any(b[0] <= x_hi and b[2] >= x_lo and b[1] <= y_hi and b[3] >= y_lo for b in boxes):
                yield white
                continue
            xs = (tx + np.arange(tile) + 0.5) * sx
            ys = (ty + np.arange(tile) + 0.5) * sy
            m = tissue_mask(regions, xs[None, :], ys[:, None])
            if not m.any():
                yield white
                continue
            ix = _mirror((xs / tex_scale).astype(np.int64), T)
            iy = _mirror((ys / tex_scale).astype(np.int64), T)
            out = white.copy()
            out[m] = tex[iy[:, None], ix[None, :]][m]
            yield out


def make_synthetic_slide(
    path: str | os.PathLike,
    size: tuple[int, int] = (4096, 3072),
    mpp: float | None = 0.5,
    levels: int = 3,
    downsample: float = 2,
    tissue_class: int | str = 0,
    layout: str = "three",
    regions: list[Region] | None = None,
    tile: int = 256,
    compression: str | None = "zlib",
    seed: int | None = None,
) -> SyntheticSlide:
    """Write a pyramidal tiled TIFF slide and return its ground truth.

    Parameters
    ----------
    path : output ``.tiff`` path (written atomically).
    size : level-0 ``(width, height)`` in pixels.
    mpp : level-0 microns per pixel written as TIFF resolution tags (centimetre units); ``None`` writes none,
        so the slide has no MPP metadata.
    levels : number of pyramid levels (one top-level IFD each, as OpenSlide's generic-tiff expects).
    downsample : factor between consecutive levels (need not be a power of two).
    tissue_class : ``0``/``"ihc"`` (brown/blue IHC), ``1``/``"he_coarse"`` (pink-purple, 3x coarser texture),
        ``2``/``"blue_fine"`` (blue, fine texture): visibly different classes for classification demos.
    layout : see :func:`default_regions`; ignored when ``regions`` is given.
    compression : ``"zlib"``, ``"jpeg"`` (needs imagecodecs) or ``None``.
    seed : when given, the layout's pieces are randomly moved (up to 4% of the slide) and resized (up to 10%),
        so several slides of one class differ.
    """
    import tifffile

    if isinstance(tissue_class, int):
        if not 0 <= tissue_class < len(TISSUE_CLASSES):
            raise ValueError(f"tissue_class {tissue_class} out of range 0..{len(TISSUE_CLASSES) - 1}")
        tissue_class = TISSUE_CLASSES[tissue_class]
    if levels < 1 or downsample <= 1 and levels > 1:
        raise ValueError(f"need levels >= 1 and downsample > 1, got levels={levels}, downsample={downsample}")
    path = Path(path)
    w0, h0 = int(size[0]), int(size[1])
    if regions is None:
        regions = default_regions(w0, h0, layout)
        if seed is not None:
            regions = jitter_regions(regions, (w0, h0), seed)
    tex, tex_scale = _texture(tissue_class)
    dims = []
    for i in range(levels):
        d = downsample**i
        dims.append((max(1, int(w0 // d)), max(1, int(h0 // d))))
    bigtiff = w0 * h0 * 3 > 2**31
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for i, (w, h) in enumerate(dims):
            kw = {}
            if i == 0 and mpp is not None:
                kw = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            tw.write(
                _level_tiles(regions, tex, tex_scale, (w0, h0), (w, h), tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if i else 0,
                metadata=None,
                **kw,
            )
    return SyntheticSlide(path, (w0, h0), mpp, dims, list(regions), tissue_class)
