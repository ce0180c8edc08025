"""One flag dialect for every argparse command of ``vapt`` and ``mgpath``.

- Long options are spelt with underscores, as the config fields and LightningCLI's options are
  (``--tile_size``, ``--ckpt_path``); the dashed spelling (``--tile-size``) is accepted as an alias and hidden
  from ``--help``.
- A renamed option keeps its old spelling for one release (``deprecated=("--ckpt",)``): it still works and
  prints one notice line on stderr naming the new spelling.
- ``--folds`` has one grammar everywhere (:func:`parse_folds`): ``0 1 2``, ``0..4`` or both mixed.
- Config-driven commands take ``-c/--config`` and ``--print_config`` (:func:`add_config_options`).
- Help is plain text: docstring markup is stripped (:mod:`vapt.cli.help_text`).

The table of names is ``docs/interface.md``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from vapt.cli.help_text import plain_formatter

__all__ = ["DialectParser", "add_config_options", "parse_folds", "print_configs"]


def _canonical(option: str) -> str:
    return "--" + option[2:].replace("-", "_") if option.startswith("--") else option


def _dashed(option: str) -> str:
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


class _HideAliases(argparse.HelpFormatter):
    """Lists each option under its canonical spelling only."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if not hidden or not action.option_strings:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if s not in hidden]
        copy = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar,
                               default=action.default, help=action.help, choices=action.choices)
        copy.option_strings = shown
        return super()._format_action_invocation(copy) if action.nargs != 0 else ", ".join(shown)


class DialectParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` speaking the shared dialect (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        base = kwargs.pop("formatter_class", argparse.HelpFormatter)
        kwargs["formatter_class"] = plain_formatter(type(f"Dialect{base.__name__}", (_HideAliases, base), {}))
        super().__init__(*args, **kwargs)
        self._deprecated: dict[str, str] = {}

    def add_argument(self, *names: str, deprecated: Iterable[str] = (), **kwargs) -> argparse.Action:
        """As argparse's, with the canonical underscore spelling first, the dashed one as a hidden alias and
        ``deprecated`` old spellings (each with its own dashed / underscore alias) that print a notice."""
        if not names or not names[0].startswith("-"):
            return super().add_argument(*names, **kwargs)
        canonical = [_canonical(n) for n in names]
        aliases = [a for n in canonical for a in (_dashed(n),) if a != n]
        old = [o for d in deprecated for o in dict.fromkeys((_canonical(d), _dashed(d)))]
        strings = list(dict.fromkeys(canonical + aliases + old))
        if "dest" not in kwargs and canonical[0].startswith("--"):
            kwargs["dest"] = canonical[0][2:]
        action = super().add_argument(*strings, **kwargs)
        action.hidden_aliases = tuple(s for s in strings if s not in canonical)
        for o in old:
            self._deprecated[o] = canonical[0]
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        for a in args:
            name = a.split("=", 1)[0]
            if name in self._deprecated:
                print(f"{self.prog}: {name} is deprecated and will be removed; use {self._deprecated[name]}",
                      file=sys.stderr)
        return super().parse_known_args(args, namespace)


def parse_folds(values: Sequence[str | int]) -> list[int]:
    """The shared ``--folds`` grammar: ``["0", "1"]``, ``["0..4"]``, ``["0,2..3"]`` -> sorted unique fold ids.

    Raises
    ------
    ValueError
        On an empty selection, a negative id or a range that runs backwards.
    """
    folds: set[int] = set()
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                if ".." in part:
                    lo, hi = (int(x) for x in part.split(".."))
                    if hi < lo:
                        raise ValueError
                    folds.update(range(lo, hi + 1))
                else:
                    folds.add(int(part))
            except ValueError:
                raise ValueError(f"--folds {part!r}: give fold numbers (0 1 2) or a range (0..4)") from None
    if not folds or min(folds) < 0:
        raise ValueError(f"--folds {' '.join(map(str, values))!r}: give fold numbers >= 0, e.g. --folds 0..4")
    return sorted(folds)


def add_config_options(parser: DialectParser, *, required: bool = True, repeat: bool = False,
                       help: str = "YAML config: a path or a shipped config name") -> None:
    """``-c/--config`` (repeatable with ``repeat``) and ``--print_config`` (print the config and exit)."""
    parser.add_argument("-c", "--config", required=required, action="append" if repeat else "store", help=help)
    parser.add_argument("--print_config", action="store_true", help="print the config file(s) and exit")


def print_configs(configs: str | Sequence[str], resolve=None) -> int:
    """Print each config file (``resolve`` turns a shipped name into its path); exit status 0."""
    for config in [configs] if isinstance(configs, str) else configs:
        path = Path(resolve(config) if resolve else config)
        print(f"# {path}\n{path.read_text()}" if not isinstance(configs, str) else path.read_text(), end="")
    return 0
