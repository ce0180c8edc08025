"""Keeping one output folder safe when several runs share it.

- :class:`SlideLock`: a per-output lock file created exclusively (``O_CREAT | O_EXCL``) holding the owner's
  host, process id and process start time. A run that finds a lock of a live process leaves that output to
  it; a lock whose process is gone (a run killed with ``kill -9``) is taken over, as TRIDENT does - also
  when its pid now belongs to another process (the start time differs).
- :func:`clean_temp`: removes temporary files of killed runs, only those whose writer process is gone.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from vapt.fileio.atomic import temp_owner_pid
from vapt.fileio.atomic import is_own_temp, temp_owner_pid

__all__ = ["SlideLock", "clean_temp", "pid_alive", "process_start"]


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22 of stat(5), counted after the ")" closing the command name
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SlideLock:
    """An exclusive lock file ``path`` for one output; use :meth:`acquire` and :meth:`release`.

    ``acquire()`` returns True when this process holds the lock (fresh or taken over from a dead owner) and
    False when a live process (or one on another host) holds it; :attr:`owner` then describes that holder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.owner = ""
        self.held = False
        self.took_over = ""

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # being written this instant, or garbage: look again
                    holder = {}
                pid, host = int(holder.get("pid", -1)), holder.get("host")
                if host == socket.gethostname() and pid == os.getpid():
                    self.held = True
                    return True
                start = holder.get("start")
                reused = start is not None and pid_alive(pid) and process_start(pid) not in (None, start)
                if host not in (None, socket.gethostname()) or (pid_alive(pid) and not reused):
                    self.owner = f"pid {pid} on {host}"
                    return False
                self.took_over = (f"stale lock of pid {pid} taken over (that pid now belongs to another process)"
                                  if reused else f"stale lock of dead pid {pid} taken over")
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return True
        self.owner = "another run (lock keeps changing hands)"
        return False

    def release(self) -> None:
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


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
