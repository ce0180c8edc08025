"""Keeping one output folder safe when several runs share it.

- :class:`vapt.fileio.locks.SlideLock` (re-exported here): a per-output lock file holding the owner's host, pid
  and process start time; a lock of a dead (or pid-reused) process is taken over.
- :func:`clean_temp`: removes temporary files of killed runs, only those whose writer process is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

from vapt.fileio.atomic import is_own_temp, temp_owner_pid
from vapt.fileio.locks import SlideLock, pid_alive, process_start

__all__ = ["SlideLock", "clean_temp", "pid_alive", "process_start"]


def clean_temp(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary files under ``out`` that this tool wrote and whose writer process is gone; return them.

    Only names of :func:`vapt.fileio.atomic.atomic_path`'s pattern for this tool's outputs qualify
    (:func:`vapt.fileio.atomic.is_own_temp`): ``<target>.<pid>.<random>.tmp`` is kept while process ``pid`` runs,
    ``<target>.<random>.tmp`` (older versions, no pid) is removed. Any other file (a user's ``draft.tmp``)
    is never touched, nor are links.
    """
    out = Path(out)
    removed = []
    if out.exists():
        for t in out.rglob("*.tmp"):
            if not is_own_temp(t.name) or t.is_symlink() or not t.is_file():
                continue
            pid = temp_owner_pid(t.name)
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                continue
            try:
                t.unlink()
                removed.append(t)
            except OSError:
                pass
    return removed
