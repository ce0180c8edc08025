"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers never see a half-written output, and a run that dies (an exception, Ctrl-C) leaves nothing behind.
A run killed outright (``kill -9``) can leave ``<name>.<pid>.<random>.tmp`` next to the target; the
name carries the writer's process id so that a clean-up removes only the files of processes that are gone
(:func:`temp_owner_pid`), never another live run's. Used by vapt and mgpath alike (vapt never imports mgpath).
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

    The temporary file is ``<name>.<pid>.<random><suffix>`` in the target's folder (created if missing), so the
    final ``os.replace`` is a rename on one file system. Keep ``suffix`` where a writer infers the format
    from the extension (e.g. ``suffix=".png"`` for matplotlib's ``savefig``). On success the file gets the
    umask-derived mode of a normally created file and replaces ``path``; on any exception it is removed and
    the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temp_owner_pid(name: str) -> int | None:
    """The process id in a temporary file name made by :func:`atomic_path` (None if the name carries none)."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[-3].isdigit():
        return int(parts[-3])
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (text mode, default encoding, as ``open(path, "w")``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
