"""User errors of the vapt command lines: one line on stderr and exit code 2, the traceback only on request.

A user error is one of the project's own "this input cannot be used" exceptions (bad data, model keywords,
checkpoint, backbone, tune request, shipped resource) or Lightning's ``MisconfigurationException``, also when wrapped by
jsonargparse or re-raised from a DataLoader worker. ``--debug`` (removed from the arguments) or
``VAPT_DEBUG=1`` lets it propagate with its traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

EXIT_BAD_INPUT = 2
EXIT_SKIPPED = 1


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "bad input" (imported lazily: each module owns its error)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from vapt.atomic import JSONFileError
    from vapt.backbones import BackboneError
    from vapt.data.base import DataError
    from vapt.module import ModelConfigError
    from vapt.resources import ResourceError
    from vapt.resume import CheckpointError
    from vapt.tune import TuneError

    # OSError: the file system said no (disk full, read-only folder or HOME cache, permissions); its message
    # names the file
    return (DataError, ModelConfigError, CheckpointError, BackboneError, TuneError, ResourceError,
            MisconfigurationException, JSONFileError, OSError)


def find_user_error(exc: BaseException | None) -> BaseException | None:
    """The user error behind ``exc`` (jsonargparse wraps errors raised in ``__init__``), or None."""
    types, seen = user_error_types(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line; a DataLoader worker's re-raised error keeps only the original message."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # "Caught DataError in DataLoader worker process 0. Original Traceback ..."
        text = text.splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}"


def debug_requested(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether tracebacks were asked for (``--debug`` or ``VAPT_DEBUG=1``)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv) or os.environ.get("VAPT_DEBUG", "").lower() in ("1", "true", "yes")


def run_reporting_user_errors(prog: str, fn: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """``fn(argv)`` with user errors reported as one line on stderr (exit 2), unless debugging."""
    argv, debug = debug_requested(argv)
    try:
        return int(fn(argv) or 0)
    except Exception as e:
        user = find_user_error(e)
        if user is None or debug:
            raise
        print(f"{prog}: {one_line(user)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
