"""The error of sweep requests that cannot run exactly (one place, so every sweep module can raise it)."""
from __future__ import annotations


class SweepError(ValueError):
    """A sweep set-up that would not give the result of the separate runs; the message says what to change."""
