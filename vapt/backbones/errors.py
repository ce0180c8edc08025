"""The one error type of the backbones package (a leaf module: every other backbones module imports it)."""
from __future__ import annotations


class BackboneError(ValueError):
    """A backbone name, checkpoint or input size that cannot be used; the message says how to fix it."""
