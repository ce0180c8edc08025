"""`mgpath` command line: dispatches each subcommand to the module that owns it.

Subcommands are imported lazily so that `mgpath tile` does not import the model code and vice versa. A user
error ends in one line naming what was wrong and exit status 2 (bad input); the traceback is shown only
with ``--debug`` (anywhere on the line) or ``MGPATH_DEBUG=1`` / ``VAPT_DEBUG=1``.
"""
from __future__ import annotations

import os
import pickle
import sys
import zipfile

from vapt.cli import dispatch

#: subcommand -> (module, function taking argv list, one-line help)
SUBCOMMANDS = {
    "tile": ("mgpath.commands.tile", "main", "segment tissue and tile slides into a coordinates h5 per slide"),
    "extract": ("mgpath.commands.extract", "main", "encode tiles with a frozen encoder into a features h5 per slide"),
    "encoders": ("mgpath.commands.encoders", "main", "list the tile-encoder presets (uni_v1, conch_v1, ...)"),
    "splits": ("mgpath.splits", "main", "make K-shot, patient-grouped, stratified folds from a labels CSV"),
    "fit": ("mgpath.lightning_cli", "main", "train MGPATH (LightningCLI)"),
    "validate": ("mgpath.lightning_cli", "main", "validate MGPATH (LightningCLI)"),
    "test": ("mgpath.lightning_cli", "main", "test MGPATH (LightningCLI)"),
    "predict": ("mgpath.lightning_cli", "main", "predict with MGPATH (LightningCLI)"),
    "folds": ("mgpath.folds", "main", "train and test over all folds; mean and std per metric"),
    "benchmark": ("mgpath.benchmark", "main", "MGPATH and the baselines over the same folds (resumable)"),
    "report": ("mgpath.report", "main", "table and plot of a benchmark folder (mean ± std per method)"),
    "zeroshot": ("mgpath.zeroshot", "main", "classify slides from the class descriptions alone"),
    "import-official": ("mgpath.official", "main", "convert an official MGPATH checkpoint into this model"),
    "heatmap": ("mgpath.heatmap", "main", "draw prompt attention and transport mass over a slide"),
    "demo": ("mgpath.demo", "main", "end-to-end demo on generated slides (CPU, a few minutes)"),
    "configs": ("vapt.resources", "mgpath_configs_main", "list (--list) or print the shipped WSI configs"),
}


_LIGHTNING = {"fit", "validate", "test", "predict"}


#: exceptions that mean bad input (files, values, settings) rather than a bug
USER_ERRORS = (OSError, ValueError, KeyError, LookupError, TypeError, RuntimeError, EOFError, ImportError,
               pickle.UnpicklingError, zipfile.BadZipFile)


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` on the command line or ``MGPATH_DEBUG`` / ``VAPT_DEBUG`` set to a true value."""
    env = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("MGPATH_DEBUG", "VAPT_DEBUG"))
    return env or "--debug" in argv


#: how jsonargparse begins the message of an error it wraps around one raised while building a class
_WRAPPER_PHRASES = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def root_cause(error: BaseException) -> BaseException:
    """The error behind jsonargparse's wrappers (a model's own message, not a dump of the parsed values)."""
    seen = set()
    while (error.__cause__ is not None and id(error) not in seen
           and str(error).strip().startswith(_WRAPPER_PHRASES)):
        seen.add(id(error))
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (KeyError's repr quotes removed; jsonargparse wrappers unwrapped)."""
    error = root_cause(error)
    msg = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def printable_streams() -> None:
    """Let stdout and stderr show any text, such as file names that are not UTF-8 (as ``\\udcxx``)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    printable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if debug:
        os.environ["MGPATH_DEBUG"] = "1"
    try:
        return dispatch("mgpath", SUBCOMMANDS, argv, _LIGHTNING)
    except KeyboardInterrupt:
        print("mgpath: interrupted; finished outputs are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # the one place that turns any failure into one readable line
        if debug:
            raise
        where = f"mgpath {argv[0]}" if argv else "mgpath"
        hint = "" if isinstance(e, USER_ERRORS) else " (this looks like a bug: rerun with --debug and report it)"
        print(f"{where}: {one_line(e)}{hint}  [--debug shows the traceback]", file=sys.stderr)
        return 2 if isinstance(e, USER_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
