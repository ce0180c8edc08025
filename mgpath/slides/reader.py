"""Whole-slide reading over OpenSlide: MPP from every place it is stored, reads at a target MPP, on white.

Coordinates are always level-0 pixels ``(x, y)`` of the top-left corner; sizes are ``(width, height)``.
MPP parsing and the magnification convention live in :mod:`mgpath.slides.mpp`.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mgpath.slides.mpp import (
    MPP_RANGE,
    _float,
    magnification_to_mpp,
    mpp_from_properties,
    mpp_to_magnification,
)

__all__ = [
    "MPP_RANGE",
    "OVERRIDE_MPP_RANGE",
    "MPPError",
    "Slide",
    "SlideError",
    "check_mpp_override",
    "magnification_to_mpp",
    "mpp_to_magnification",
    "slide_id_from_path",
    "mpp_from_properties",
]


class SlideError(RuntimeError):
    """A slide could not be opened or read; the message names the slide and what to do."""


class MPPError(SlideError):
    """A slide has no usable MPP (microns per pixel) metadata."""


#: accepted range of a user-given level-0 MPP (um/px): wider than :data:`MPP_RANGE` (coarse scans), narrow
#: enough that a magnification typed as MPP (``--mpp 40``) is caught
OVERRIDE_MPP_RANGE = (0.05, 20.0)


def check_mpp_override(value, what: str = "--mpp") -> float:
    """``value`` as a float when it is a plausible level-0 MPP, else `MPPError` saying why (naming ``what``)."""
    try:
        v = float(str(value).strip())
    except (TypeError, ValueError):
        raise MPPError(f"{what}: {value!r} is not a number of um/px") from None
    lo, hi = OVERRIDE_MPP_RANGE
    if math.isfinite(v) and v <= 0:
        raise MPPError(f"{what}: {value!r} um/px: MPP must be positive (microns per level-0 pixel, e.g. 0.25 for "
                       "a 40x scan, 0.5 for 20x)")
    if not (math.isfinite(v) and lo <= v <= hi):
        hint = (f"; it looks like a magnification: {v:g}x is about {10 / v:.3g} um/px" if v > hi else "")
        raise MPPError(f"{what}: {value!r} um/px is outside the plausible {lo}-{hi} um/px{hint}. MPP is microns "
                       "per level-0 pixel (0.25 for a 40x scan, 0.5 for 20x), not a magnification")
    return v


def slide_id_from_path(path: str | os.PathLike) -> str:
    """Slide id: the file name without its last extension (``TCGA-xx.svs`` -> ``TCGA-xx``)."""
    name = Path(path).name
    return name.rsplit(".", 1)[0] if "." in name else name


def _open_osr(path: str):
    import openslide

    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError as e:
        raise SlideError(
            f"{path} is not a whole-slide image OpenSlide can open ({e or 'unsupported format'}); "
            "check the file is a supported slide (svs, ndpi, mrxs, tiled pyramidal tiff, ...)"
        ) from None
    except openslide.OpenSlideError as e:
        raise SlideError(
            f"{path} could not be read by OpenSlide ({e}); the file may be truncated or corrupt"
        ) from None
    except FileNotFoundError:
        raise SlideError(f"slide {path} does not exist") from None


class Slide:
    """A whole-slide image opened through OpenSlide.

    Parameters
    ----------
    path : slide file.
    mpp : level-0 microns per pixel; overrides the file's metadata (use it when the metadata is missing
        or wrong).

    fast : read footprints (:meth:`read_footprint`, :meth:`read`) of JPEG-tiled TIFF/svs files through
        :class:`mgpath.slides.jpeg_tiles.JpegTiles` (tiles decoded once, reduced-scale DCT decode; the
        default, about 4x the tiles/s of OpenSlide on one core) instead of OpenSlide. Files that do not
        qualify are read with OpenSlide; ``fast_reason`` says why. ``False`` reads everything with OpenSlide
        (the reference: full-scale reads are the same pixels either way; reduced-scale reads differ by a mean
        absolute 3 or less per channel, see ``docs/benchmarks-slides.md``).
    dct_margin : with ``fast``, how much resolution a reduced-scale JPEG decode keeps above the target
        (see :func:`mgpath.slides.jpeg_tiles.plan_read`; None: straight at 1/2, one octave kept below;
        0 fastest; 1 closest to OpenSlide).

    The OpenSlide handle opens lazily and is not pickled, so a ``Slide`` can be sent to DataLoader worker
    processes: each process opens its own handle on first use. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self, path: str | os.PathLike, mpp: float | None = None, fast: bool = True, dct_margin: int | None = None
    ):
        self.path = str(path)
        self.slide_id = slide_id_from_path(self.path)
        if mpp is not None:
            check_mpp_override(mpp, f"mpp override for slide {self.path}")
        self._mpp_override = float(mpp) if mpp is not None else None
        self._osr = None
        osr = self._handle()
        self.dimensions: tuple[int, int] = tuple(osr.dimensions)
        self.level_count: int = osr.level_count
        self.level_dimensions: list[tuple[int, int]] = [tuple(d) for d in osr.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in osr.level_downsamples]
        self.properties: dict[str, str] = dict(osr.properties)
        if self._mpp_override is not None:
            self._mpp, self.mpp_source, self._mpp_notes = self._mpp_override, "override", []
        else:
            self._mpp, self.mpp_source, self._mpp_notes = mpp_from_properties(self.properties)
        self._jpeg = None
        self.fast_reason = "not asked for"
        if fast:
            self._jpeg, self.fast_reason = _fast_reader(self, dct_margin)
        self._level_tiles = self._jpeg if fast else False  # False: not looked at yet (see _whole_level_reader)
        self._kept_levels: dict | None = None

    @property
    def fast(self) -> bool:
        """True when footprints are read through the JPEG fast path."""
        return self._jpeg is not None

    # -- handle management -------------------------------------------------------------------------
    def _handle(self):
        if self._osr is None:
            self._osr = _open_osr(self.path)
        return self._osr

    def close(self) -> None:
        """Close the OpenSlide handle (a later read reopens it)."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        if self._jpeg is not None:
            self._jpeg.close()
        if self._level_tiles and self._level_tiles is not self._jpeg:
            self._level_tiles.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_osr"] = None
        state["_kept_levels"] = None
        return state

    @contextlib.contextmanager
    def sharing_levels(self):
        """Inside this block every whole pyramid level read (:meth:`read_level`, and so :meth:`thumbnail` and
        :meth:`read_at_downsample`) is read once and kept (read-only), so a segmentation image and a preview
        of the same level share one read; the levels are dropped on leaving the block."""
        outer = self._kept_levels
        self._kept_levels = {} if outer is None else outer
        try:
            yield self
        finally:
            self._kept_levels = outer

    def __repr__(self) -> str:
        mpp = f"{self._mpp:.4g}" if self._mpp else "unknown"
        return f"Slide({self.path!r}, dimensions={self.dimensions}, levels={self.level_count}, mpp={mpp})"

    # -- resolution ----------------------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        """Level-0 microns per pixel; raises :class:`MPPError` when the slide has no plausible MPP."""
        if self._mpp is None:
            looked = "; ".join(self._mpp_notes) or "no resolution metadata"
            raise MPPError(
                f"Slide {self.path} has no usable MPP metadata ({looked}); pass the level-0 microns per pixel "
                "with --mpp (e.g. --mpp 0.25 for a 40x scan) or Slide(path, mpp=0.25)"
            )
        return self._mpp

    @property
    def has_mpp(self) -> bool:
        return self._mpp is not None

    @property
    def magnification(self) -> float:
        """Level-0 magnification derived from MPP (``10 / mpp``)."""
        return mpp_to_magnification(self.mpp)

    @property
    def objective_power(self) -> float | None:
        """The scanner's ``openslide.objective-power`` if stored (may disagree with the MPP)."""
        return _float(self.properties.get("openslide.objective-power"))

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of pyramid ``level``."""
        return self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float, tolerance: float = 0.01) -> tuple[int, float]:
        """Deepest level whose downsample is <= ``downsample * (1 + tolerance)``.

        Returns ``(level, residual)`` where ``residual = downsample / level_downsample`` (>= about 1) is the
        resize factor still to apply after reading that level (1.0: no resize).
        """
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + tolerance):
                best = i
        return best, downsample / self.level_downsamples[best]

    def best_level_for_mpp(self, target_mpp: float, tolerance: float = 0.01) -> tuple[int, float]:
        """Level to read for ``target_mpp`` plus the residual shrink factor (see best_level_for_downsample)."""
        return self.best_level_for_downsample(target_mpp / self.mpp, tolerance)

    # -- reading -------------------------------------------------------------------------------------
    def _read_pil(self, xy_level0, level: int, size) -> Image.Image:
        import openslide

        x, y = int(round(xy_level0[0])), int(round(xy_level0[1]))
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size} for slide {self.path}")
        try:
            rgba = self._handle().read_region((x, y), level, (w, h))
        except openslide.OpenSlideError as e:
            self.close()
            raise SlideError(
                f"reading {self.path} at ({x}, {y}) level {level} failed ({e}); the file may be corrupt"
            ) from None
        return _on_white(rgba)

    def read_region(self, xy_level0: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size=(w, h)`` pixels of ``level`` at level-0 ``xy``; RGB uint8 ``(h, w, 3)`` on white."""
        return np.array(self._read_pil(xy_level0, level, size))

    def read_footprint(
        self,
        xy_level0: tuple[float, float],
        size_level0: float | tuple[float, float],
        out_size: int | tuple[int, int],
    ) -> np.ndarray:
        """Read the level-0 box ``xy + size_level0`` resized to ``out_size`` px: RGB uint8 ``(h, w, 3)``.

        With OpenSlide (``fast=False``, or a file the fast path does not take) the deepest level not coarser
        than needed is read, then resized (bilinear, antialiased) only when the residual factor differs from 1;
        the fast path is described in :mod:`mgpath.slides.jpeg_tiles`. Works without MPP.
        """
        if self._jpeg is not None:
            try:
                return self._jpeg.read_footprint(xy_level0, size_level0, out_size)
            except OSError as e:
                raise SlideError(
                    f"reading {self.path} at {tuple(xy_level0)} failed ({e}); the file may be corrupt"
                ) from None
        sw, sh = (size_level0, size_level0) if np.isscalar(size_level0) else size_level0
        ow, oh = (out_size, out_size) if np.isscalar(out_size) else out_size
        level, _ = self.best_level_for_downsample(min(sw / ow, sh / oh))
        ds = self.level_downsamples[level]
        rw, rh = max(1, int(round(sw / ds))), max(1, int(round(sh / ds)))
        img = self._read_pil(xy_level0, level, (rw, rh))
        if (rw, rh) != (int(ow), int(oh)):
            img = img.resize((int(ow), int(oh)), Image.Resampling.BILINEAR)
        return np.array(img)

    def read(self, xy_level0: tuple[float, float], size_px: int, mpp: float | None = None) -> np.ndarray:
        """A ``size_px x size_px`` tile at ``mpp`` um/px (level-0 MPP if None) -> RGB uint8 ``(size, size, 3)``."""
        scale = 1.0 if mpp is None else float(mpp) / self.mpp
        return self.read_footprint(xy_level0, size_px * scale, size_px)

    def read_level(self, level: int, max_pixels: int = 2**28) -> np.ndarray:
        """A whole pyramid level as RGB uint8 ``(H_l, W_l, 3)`` on white (refuses levels over ``max_pixels``).

        A JPEG-tiled TIFF/svs level is assembled from its tiles decoded at full scale (the same pixels as
        OpenSlide's, several times faster: no RGBA round trip); other files are read with OpenSlide.
        """
        w, h = self.level_dimensions[level]
        if w * h > max_pixels:
            raise SlideError(
                f"level {level} of {self.path} is {w}x{h} px, too large to read whole; use a coarser "
                f"level or thumbnail()"
            )
        kept = self._kept_levels
        if kept is not None and level in kept:
            return kept[level]
        tiles = self._whole_level_reader()
        if tiles is not None:
            try:
                img = tiles.read_level(level)
            except OSError as e:
                raise SlideError(f"reading level {level} of {self.path} failed ({e}); the file may be corrupt") from None
        else:
            img = self.read_region((0, 0), level, (w, h))
        if kept is not None:
            img.flags.writeable = False
            kept[level] = img
        return img

    def _whole_level_reader(self):
        """The JPEG tile reader for whole levels (looked for once), or None when the file does not qualify."""
        if self._level_tiles is False:
            from mgpath.slides.jpeg_tiles import JpegTiles, jpeg_levels

            levels, _ = jpeg_levels(self.path)
            ok = levels and [(lv.width, lv.height) for lv in levels] == self.level_dimensions
            self._level_tiles = JpegTiles(self.path, levels, self.level_downsamples, cache_mb=0) if ok else None
        return self._level_tiles

    def read_at_downsample(
        self, downsample: float, max_side: int = 16384, block: int = 8192, resample: str = "bilinear"
    ) -> np.ndarray:
        """The whole slide resized to ``dimensions / downsample``: RGB uint8 ``(h, w, 3)`` on white.

        Reads the best level whole when it is small enough, otherwise in ``block x block`` pieces that are
        shrunk one by one (slides without a pyramid still work, in bounded memory). ``resample``:
        ``"bilinear"`` (PIL, antialiased) or ``"area"`` (OpenCV area averaging, several times faster; for
        pictures such as previews).
        """
        if resample not in ("bilinear", "area"):
            raise ValueError(f"resample must be 'bilinear' or 'area', got {resample!r}")
        w0, h0 = self.dimensions
        downsample = max(downsample, w0 / max_side, h0 / max_side, 1e-9)
        ow, oh = max(1, int(round(w0 / downsample))), max(1, int(round(h0 / downsample)))
        level, _ = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        if lw * lh <= block * block:
            img = self.read_level(level)
            if img.shape[1] != ow or img.shape[0] != oh:
                img = _shrink(img, (ow, oh), resample)
            return img
        fx, fy = ow / lw, oh / lh
        ds = self.level_downsamples[level]
        out = Image.new("RGB", (ow, oh), (255, 255, 255))
        for by in range(0, lh, block):
            for bx in range(0, lw, block):
                bw, bh = min(block, lw - bx), min(block, lh - by)
                x0, y0 = int(round(bx * fx)), int(round(by * fy))
                x1, y1 = int(round((bx + bw) * fx)), int(round((by + bh) * fy))
                if x1 <= x0 or y1 <= y0:
                    continue
                piece = self._read_pil((bx * ds, by * ds), level, (bw, bh))
                out.paste(piece.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), (x0, y0))
        return np.array(out)

    def thumbnail(self, max_size: int = 1024, resample: str = "bilinear") -> np.ndarray:
        """Whole-slide RGB uint8 ``(h, w, 3)`` on white whose longer side is ``max_size`` px (``resample``: see
        :meth:`read_at_downsample`)."""
        w0, h0 = self.dimensions
        return self.read_at_downsample(max(w0, h0) / float(max_size), resample=resample)


def _fast_reader(slide: Slide, dct_margin: int | None):
    """``(JpegTiles or None, reason)``: the fast path when every OpenSlide level is a JPEG-tiled page."""
    from mgpath.slides.jpeg_tiles import JpegTiles, jpeg_levels

    levels, why = jpeg_levels(slide.path)
    if not levels:
        return None, why
    dims = [(lv.width, lv.height) for lv in levels]
    if dims != slide.level_dimensions:
        return None, f"tiled pages {dims} differ from OpenSlide's levels {slide.level_dimensions}"
    return JpegTiles(slide.path, levels, slide.level_downsamples, dct_margin=dct_margin), ""


def _shrink(img: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize RGB uint8 ``(h, w, 3)`` to ``size=(w, h)``: PIL antialiased bilinear or OpenCV area averaging."""
    if resample == "area":
        import cv2

        shrink = min(img.shape[1] / size[0], img.shape[0] / size[1])
        how = cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR  # below 2x, 2 x 2 bilinear taps cover each footprint
        return cv2.resize(np.ascontiguousarray(img), size, interpolation=how)
    return np.array(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite OpenSlide's RGBA (straight alpha; transparent outside the scanned area) onto white -> RGB."""
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
