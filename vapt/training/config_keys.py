"""Did-you-mean for misspelt LightningCLI options and config keys.

:class:`SuggestingArgumentParser` is a ``LightningArgumentParser`` (passed as ``parser_class``) whose error
message ends with the closest accepted names, for both forms jsonargparse reports:

- an unknown top-level key or flag (``trainer.max_epoch``, ``--trainr.max_epochs``): compared with every
  option of the parser and of its subcommand parsers;
- an unknown ``init_args`` key of a class (``Option 'num_tokns' is not accepted`` under
  ``class_path 'vapt.training.module.PromptTuningModule'``): compared with that class's constructor parameters.
"""
from __future__ import annotations

import difflib
import inspect
import re

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from vapt.cli.help_text import plain_formatter

__all__ = ["SuggestingArgumentParser", "suggestions"]

_CLASS_OPTION = re.compile(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted")
_TOP_KEY = re.compile(r"does not accept option '([\w.]+)'|unrecognized arguments: --([\w.]+)"
                      r"|Key '([\w.]+)' is not expected")


def _init_params(class_path: str) -> list[str]:
    from jsonargparse._util import import_object

    try:
        cls = import_object(class_path)
        return list(dict.fromkeys(p for c in inspect.getmro(cls) if c is not object
                                  for p in inspect.signature(c.__init__).parameters
                                  if p not in ("self", "args", "kwargs")))
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _option_names(parser) -> list[str]:
    names = [a.dest for a in parser._actions if a.dest and a.dest != "help"]
    sub = getattr(parser, "_subcommands_action", None)
    for child in (getattr(sub, "_name_parser_map", None) or {}).values():
        names += _option_names(child)
    return names


def suggestions(message: str, parser=None) -> list[str]:
    """``"'bad' -> did you mean 'good'?"`` lines for the unknown names in a jsonargparse error message."""
    out = []
    for class_path, bad in dict.fromkeys(_CLASS_OPTION.findall(message)):
        close = difflib.get_close_matches(bad, _init_params(class_path), n=3, cutoff=0.6)
        if close:
            out.append(f"{bad!r} is not an option of {class_path.rsplit('.', 1)[-1]}; did you mean "
                       + " or ".join(repr(c) for c in close) + "?")
    names = sorted(set(_option_names(parser))) if parser is not None else []
    for groups in _TOP_KEY.findall(message):
        bad = next(g for g in groups if g)
        close = difflib.get_close_matches(bad, names, n=3, cutoff=0.6)
        if close:
            out.append(f"{bad!r} is not an option; did you mean " + " or ".join(repr(c) for c in close) + "?")
    return list(dict.fromkeys(out))


class SuggestingArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors end with did-you-mean lines (see :func:`suggestions`) and whose
    help is plain text (docstring markup of the classes it documents stripped)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", plain_formatter(DefaultHelpFormatter))
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        hints = suggestions(message, self)
        if hints:
            message = message.rstrip() + "\n" + "\n".join(hints)
        return super().error(message, ex)
