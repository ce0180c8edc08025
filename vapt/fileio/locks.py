"""Per-output lock files: several runs writing into one folder each leave the others' outputs alone.

:class:`SlideLock` is a lock file created exclusively (``O_CREAT | O_EXCL``) holding the owner's host,
process id and process start time. A run that finds a lock of a live process leaves that output to it; a
lock whose process is gone (a run killed with ``kill -9``) is taken over, as TRIDENT does - also when its
pid now belongs to another process (the start time differs). Used per slide (``mgpath tile/extract``), per
fold (``mgpath folds/benchmark``) and per grid point or seed run (``vapt tune``).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

__all__ = ["SlideLock", "pid_alive", "process_start"]


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
