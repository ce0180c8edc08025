"""Keeping one output folder safe: removal of the temporary files that killed runs leave behind."""

from __future__ import annotations

from pathlib import Path

__all__ = ["clean_temp"]


def clean_temp(out: Path) -> None:
    """Remove temporary files a killed run left behind (``<name>.<random>.tmp``) under ``out``."""
    out = Path(out)
    if out.exists():
        for t in out.rglob("*.tmp"):
            try:
                t.unlink()
            except OSError:
                pass
