"""Slide reading, tissue segmentation, tiling and synthetic slides."""

from mgpath.slides.reader import (
    MPPError,
    Slide,
    SlideError,
    magnification_to_mpp,
    mpp_to_magnification,
    slide_id_from_path,
)

__all__ = [
    "Slide",
    "SlideError",
    "MPPError",
    "magnification_to_mpp",
    "mpp_to_magnification",
    "slide_id_from_path",
]
