"""Reading one image file for training: 8-bit RGB out of any PIL mode, and a cheap completeness check.

- 16-bit grey (``I;16*``, and ``I`` as 16-bit PNGs open in some Pillow versions) is scaled ``v / 257`` to
  0..255 (PIL's own ``convert("RGB")`` clips it, so nearly every pixel turns white); float images (``F``)
  in [0, 1] are scaled by 255, others clipped to 0..255.
- `image_problem` opens the header and looks for the end marker of JPEG / PNG files (``FFD9`` / ``IEND``),
  which catches files cut short by a failed copy without decoding them.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

#: what PIL raises for a damaged or foreign file
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
_TAIL = 4096
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling 16-bit and float data instead of clipping it."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        img = Image.fromarray(np.round(a).astype(np.uint8), mode="L")
    elif img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255.0 if a.size and a.min() >= 0.0 and a.max() <= 1.0 else a
        img = Image.fromarray(np.round(np.clip(a, 0, 255)).astype(np.uint8), mode="L")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB image (raises one of `DECODE_ERRORS` when damaged)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb8(img)


def image_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` looks like a complete image, else what is wrong (header only, no decoding)."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            if img.width < 1 or img.height < 1:
                return f"empty image {img.size}"
    except DECODE_ERRORS as e:
        return f"not a readable image ({type(e).__name__}: {e})"
    marker = _END_MARKERS.get(fmt or "")
    if marker is not None:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - _TAIL))
            if marker not in fh.read():
                return f"truncated {fmt} (no end marker)"
    return None
