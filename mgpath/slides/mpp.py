"""Level-0 MPP (microns per pixel) from a slide's metadata, and the magnification convention.

Magnification and MPP are tied by the usual convention ``mpp = 10 / magnification`` (10x = 1.0 um/px,
20x = 0.5, 40x = 0.25).
"""

from __future__ import annotations

import math
import re

__all__ = ["MPP_RANGE", "magnification_to_mpp", "mpp_from_properties", "mpp_to_magnification"]

#: plausible level-0 MPP window (um/px); values outside are treated as wrong metadata (e.g. 72 dpi = 352.8)
MPP_RANGE = (0.05, 4.0)

_UNIT_TO_UM = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "millimeter": 1e3, "mm": 1e3, "micrometer": 1.0}


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification -> um/px by the convention 10x = 1.0 um/px."""
    if magnification <= 0:
        raise ValueError(f"magnification must be > 0, got {magnification}")
    return 10.0 / float(magnification)


def mpp_to_magnification(mpp: float) -> float:
    """um/px -> objective magnification by the convention 10x = 1.0 um/px (not rounded)."""
    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    return 10.0 / float(mpp)


def _float(v) -> float | None:
    try:
        f = float(str(v).strip())
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def mpp_from_properties(props: dict) -> tuple[float | None, str, list[str]]:
    """Level-0 MPP from OpenSlide properties.

    Looks, in order, at ``openslide.mpp-x`` (and ``-y``), ``aperio.MPP``, ``openslide.mirax.MPP``,
    ``hamamatsu.XResolution``-style vendor keys, an ``MPP = x`` in ``openslide.comment``, and finally
    ``tiff.XResolution`` with ``tiff.ResolutionUnit`` (centimetre, inch or millimetre).

    Returns
    -------
    (mpp or None, source key, list of what was looked at and found implausible or missing)
    """
    notes: list[str] = []
    candidates: list[tuple[str, float | None]] = []
    mx, my = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if mx and my:
        candidates.append(("openslide.mpp-x/y", (mx + my) / 2))
    else:
        candidates.append(("openslide.mpp-x", mx or my))
    for key in (
        "aperio.MPP",
        "openslide.mirax.MPP",
        "mirax.GENERAL.SLIDE_RESOLUTION",
        "philips.DICOM_PIXEL_SPACING",
    ):
        if key in props:
            v = props[key]
            if key == "philips.DICOM_PIXEL_SPACING":  # '"0.000227" "0.000227"' in mm
                nums = re.findall(r"[0-9.eE+-]+", str(v))
                f = _float(nums[0]) if nums else None
                candidates.append((key, f * 1e3 if f else None))
            else:
                candidates.append((key, _float(v)))
    comment = str(props.get("openslide.comment", ""))
    m = re.search(r"MPP\s*=\s*([0-9.]+)", comment)
    if m:
        candidates.append(("openslide.comment MPP", _float(m.group(1))))
    xres, unit = _float(props.get("tiff.XResolution")), str(props.get("tiff.ResolutionUnit", "")).lower()
    if xres and unit in _UNIT_TO_UM:
        candidates.append((f"tiff.XResolution ({unit})", _UNIT_TO_UM[unit] / xres))
    elif "tiff.XResolution" in props:
        notes.append(
            f"tiff.XResolution={props.get('tiff.XResolution')} with ResolutionUnit={unit or 'missing'}"
        )
    for key, val in candidates:
        if val is None:
            notes.append(f"{key} missing")
            continue
        if MPP_RANGE[0] <= val <= MPP_RANGE[1]:
            return val, key, notes
        notes.append(f"{key}={val:g} outside {MPP_RANGE[0]}-{MPP_RANGE[1]}")
    return None, "", notes
