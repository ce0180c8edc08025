"""The one markdown table writer of both tools (``vapt report``, ``vapt summary``, ``mgpath report`` ...)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> list[str]:
    """Lines of a markdown table: the header, the separator and one line per row (cells made ``str``).

    ``align`` has one letter per column, ``l`` (``---``) or ``r`` (``---:``); default all ``l``.
    """
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"markdown_table: {len(header)} columns but align {align!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"markdown_table: a row has {len(cells)} cells, the header {len(header)}")
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")  # an empty cell is "| |"
    return lines
