"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers never see a half-written output, and a run that dies (an exception, Ctrl-C) leaves nothing behind.
A run killed outright (``kill -9``) can leave ``<name>.<random>.tmp`` next to the target; the tiler's
clean-up removes such ``*.tmp`` files. Used by vapt and mgpath alike (vapt never imports mgpath).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    """Permissions a plain ``open(..., "w")`` would give (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path to write ``path`` through.

    The temporary file is ``<name>.<random><suffix>`` in the target's folder (created if missing), so the
    final ``os.replace`` is a rename on one file system. Keep ``suffix`` where a writer infers the format
    from the extension (e.g. ``suffix=".png"`` for matplotlib's ``savefig``). On success the file gets the
    umask-derived mode of a normally created file and replaces ``path``; on any exception it is removed and
    the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (text mode, default encoding, as ``open(path, "w")``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
