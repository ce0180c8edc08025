"""The tile grid at a target resolution and the exact tissue fraction of each tile.

Pure geometry: nothing here reads a slide or writes a file (see :mod:`mgpath.pipelines.tile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mgpath.slides.reader import magnification_to_mpp

__all__ = ["TileParams", "tile_grid", "tissue_fraction"]


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
    import cv2

    sx, sy = downsample
    h, w = mask.shape
    depth = cv2.CV_32S if mask.size < 2**31 else cv2.CV_64F
    S = cv2.integral(np.ascontiguousarray(mask, np.uint8), sdepth=depth)  # (h + 1, w + 1) pixel counts

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
