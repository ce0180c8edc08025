"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers never see a half-written output, and a run that dies (an exception, Ctrl-C) leaves nothing behind.
A run killed outright (``kill -9``) can leave ``<name>.<pid>.<random>.tmp`` next to the target; the
name carries the writer's process id so that a clean-up removes only the files of processes that are gone
(:func:`temp_owner_pid`), never another live run's. Used by vapt and mgpath alike (vapt never imports mgpath).
"""

from __future__ import annotations

import json
import os
import re
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
    fd, tmp = tempfile.mkstemp(prefix=f"{_short_name(path.name)}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: extensions of the files vapt and mgpath write (a temporary name starts with the target's name)
OUTPUT_EXTENSIONS = ("h5", "json", "csv", "md", "png", "jpg", "ckpt", "pt", "yaml", "txt", "lock", "npz",
                     "safetensors")
_TEMP = re.compile(r"\.(?:" + "|".join(OUTPUT_EXTENSIONS) + r")(?:\.(?P<pid>\d+))?\.[a-z0-9_]{4,8}\.tmp$")
_MAX_PREFIX = 120  # bytes of the target name kept in a temporary name (file names stop at 255 bytes)


def _short_name(name: str) -> str:
    """``name`` cut to fit a temporary name (its end, with the extension, is kept)."""
    raw = os.fsencode(name)
    return name if len(raw) <= _MAX_PREFIX else os.fsdecode(raw[-_MAX_PREFIX:]).lstrip(".") or "x"


def is_own_temp(name: str) -> bool:
    """Whether ``name`` is a temporary file name of :func:`atomic_path` (``<target>.<pid>.<random>.tmp``, or
    ``<target>.<random>.tmp`` of older versions) for a target of one of :data:`OUTPUT_EXTENSIONS`. Any other
    ``*.tmp`` (a user's ``draft.tmp``) is not ours."""
    return _TEMP.search(name) is not None


def temp_owner_pid(name: str) -> int | None:
    """The process id in a temporary file name made by :func:`atomic_path` (None if the name carries none)."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[-3].isdigit():
        return int(parts[-3])
    return None


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python's surrogate escapes) shown as ``\\xNN``: safe
    to print, to write as UTF-8 and to put in JSON, CSV or HTML (``"Gewebe \\udce4"`` -> ``"Gewebe \\\\xe4"``)."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def drawable(text: str) -> str:
    """``text`` reduced to printable ASCII for drawing with fonts that have no other glyphs (OpenCV's)."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in printable(text))


def confined(root: str | os.PathLike, *parts: str, what: str = "output") -> Path:
    """``root/parts...`` when it stays inside ``root`` once resolved, else `ValueError` naming the item.

    Use it for every path built from data (slide ids, names in h5 attributes, CSV cells): a part that is
    absolute, holds ``..`` or a separator, or leads through a link out of ``root`` is refused.
    """
    base = Path(root)
    for part in parts:
        text = str(part)
        if (not text or text in (".", "..") or "/" in text or "\\" in text or "\x00" in text
                or os.path.isabs(text)):
            raise ValueError(f"{what} name {text!r} is not a plain file name; it would leave {base} "
                             "(rename the item)")
    path = base.joinpath(*parts)
    resolved, top = path.resolve(), base.resolve()
    if resolved != top and top not in resolved.parents:
        raise ValueError(f"{what} {path} resolves to {resolved}, outside {base}; rename the item or remove the link")
    return path


class JSONFileError(ValueError):
    """A JSON file the tool reads back (a run's result or summary) is damaged; the message names it."""


def read_json_file(path: str | os.PathLike, fix: str = "delete it and rerun the command that wrote it"):
    """The JSON document in ``path``, or `JSONFileError` naming the file and ``fix`` (truncated, not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise JSONFileError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"{fix}") from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (text mode, default encoding, as ``open(path, "w")``)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
