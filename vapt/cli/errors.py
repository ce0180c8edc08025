"""The one error reporter of the ``vapt`` and ``mgpath`` command lines.

Every failure ends in one line on stderr, in one format for both tools::

    <tool> <subcommand>: <ExceptionType>: <first line of the message> (--debug shows the traceback)

and one exit status: 0 ok, 1 failure (a bug, or a run that finished with skipped inputs), 2 bad input or
usage. A failure that is not bad input adds "this looks like a bug: rerun with --debug and report it".
``--debug`` anywhere on the command line (removed before parsing) or ``VAPT_DEBUG=1`` / ``MGPATH_DEBUG=1``
lets the exception propagate with its traceback. Which exceptions count as bad input is the caller's choice
(``user_errors``): the dispatchers use the broad :data:`INPUT_ERRORS`; ``vapt fit`` / ``vapt tune`` name the
project's own error types. The error behind a wrapper (jsonargparse, a DataLoader worker) is found through
``__cause__`` / ``__context__``. This module imports nothing from the project.
"""
from __future__ import annotations

import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = EXIT_USAGE  # bad input is a usage error: the command cannot run as given
EXIT_SKIPPED = EXIT_FAILURE  # the run finished but skipped some inputs
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = ("VAPT_DEBUG", "MGPATH_DEBUG")
DEBUG_HINT = "(--debug shows the traceback)"
BUG_HINT = "(this looks like a bug: rerun with --debug and report it)"

#: exceptions that mean bad input (files, values, settings) rather than a bug, for commands that read user files
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, LookupError, TypeError, RuntimeError, EOFError, ImportError,
    pickle.UnpicklingError, zipfile.BadZipFile)


def debug_requested(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether tracebacks were asked for (the flag or a debug variable)."""
    rest = [a for a in argv if a != DEBUG_FLAG]
    env = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in DEBUG_ENV)
    return rest, env or len(rest) != len(argv)


def find_user_error(exc: BaseException | None, user_errors: tuple[type[BaseException], ...]
                    ) -> BaseException | None:
    """The exception of a ``user_errors`` type behind ``exc`` (itself, its cause or context), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, user_errors):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


#: how jsonargparse begins the message of an error it wraps around one raised while building a class
_WRAPPER_PHRASES = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (KeyError quotes removed; a DataLoader worker's wrapper dropped; the error
    behind a jsonargparse wrapper shown instead of its dump of the parsed values)."""
    seen = set()
    while (exc.__cause__ is not None and id(exc) not in seen
           and str(exc).strip().startswith(_WRAPPER_PHRASES)):
        seen.add(id(exc))
        exc = exc.__cause__
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = text.strip()
    if "Original Traceback" in text:  # "Caught DataError in DataLoader worker process 0. Original Traceback ..."
        text = text.splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_line(prog: str, exc: BaseException, bug: bool = False) -> str:
    """The one line a failed command prints: ``prog: Type: message [bug hint] (--debug ...)``."""
    return f"{prog}: {one_line(exc)} {BUG_HINT + ' ' if bug else ''}{DEBUG_HINT}"


def report_error(prog: str, exc: BaseException, bug: bool = False) -> int:
    """Print :func:`error_line` on stderr; the exit status (2 bad input, 1 bug)."""
    print(error_line(prog, exc, bug), file=sys.stderr)
    return EXIT_FAILURE if bug else EXIT_BAD_INPUT


def run_reporting_errors(prog: str | Callable[[list[str]], str], fn: Callable[[list[str]], int | None],
                         argv: Sequence[str], user_errors: tuple[type[BaseException], ...] = INPUT_ERRORS,
                         report_bugs: bool = True) -> int:
    """``fn(argv)`` (``--debug`` removed) with every failure reported as one line, unless debugging.

    ``prog`` is the name printed in front (or a function of the arguments giving it). Under ``--debug`` the
    debug variables are set while ``fn`` runs, so that nested commands keep the traceback too. Exit status:
    ``fn``'s, 2 for a ``user_errors`` exception, 1 for anything else, 130 on Ctrl-C. With ``report_bugs``
    False, an exception that is not a user error propagates (to the dispatcher, which reports it the same way;
    callers from Python see the exception itself).
    """
    argv, debug = debug_requested(argv)
    name = prog(argv) if callable(prog) else prog
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \udcxx, never raise
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    saved = {k: os.environ.get(k) for k in DEBUG_ENV}
    if debug:
        os.environ.update(dict.fromkeys(DEBUG_ENV, "1"))
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt:
        if not report_bugs:
            raise
        print(f"{name}: interrupted; finished outputs are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the one place that turns a failure into one readable line
        user = find_user_error(e, user_errors)
        if debug or (user is None and not report_bugs):
            raise
        return report_error(name, user if user is not None else e, bug=user is None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
