"""Every command-line tool's help is plain text, and every option of every argparse parser has a help text.

The parsers are collected by running each subcommand's ``main`` until it parses its arguments (argparse's
``parse_known_args`` is replaced by one that hands the parser back instead of parsing), so a parser added
later is walked too. LightningCLI subcommands (fit / validate / test / predict) are checked through their
``--help`` output.
"""
from __future__ import annotations

import argparse
import importlib
import re

import pytest

from mgpath.cli import SUBCOMMANDS as MGPATH
from vapt.cli.subcommands import SUBCOMMANDS as VAPT

#: reStructuredText / docstring markup that must not reach a terminal
MARKUP = re.compile(r"``|:(func|class|mod|meth|attr|data|obj|ref):`")
LIGHTNING = {"fit", "validate", "test", "predict"}
TOOLS = [(tool, name, entry) for tool, table in (("vapt", VAPT), ("mgpath", MGPATH))
         for name, entry in table.items() if name not in LIGHTNING]


class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def parser_of(module: str, func: str) -> argparse.ArgumentParser:
    """The parser ``module.func`` builds (it is stopped at its first parse)."""
    def hand_back(self, args=None, namespace=None):
        raise _Parsed(self)

    main = getattr(importlib.import_module(module), func)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_known_args", hand_back)
        with pytest.raises(_Parsed) as caught:
            main([])
    return caught.value.parser


def walk(parser: argparse.ArgumentParser):
    """The parser and every sub-parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from walk(sub)


@pytest.mark.parametrize("tool, name, entry", TOOLS, ids=[f"{t} {n}" for t, n, _ in TOOLS])
def test_every_option_has_plain_help(tool, name, entry):
    module, func, summary = entry
    assert not MARKUP.search(summary)
    for parser in walk(parser_of(module, func)):
        shown = parser.format_help()
        assert not MARKUP.search(shown), f"{parser.prog}: markup in --help: {MARKUP.search(shown).group(0)}"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name_ = "/".join(action.option_strings) or action.dest
            assert action.help, f"{parser.prog} {name_}: no help text"
            assert not MARKUP.search(action.help), f"{parser.prog} {name_}: markup in {action.help!r}"
            assert "--" + action.dest.replace("_", "-") not in action.help.replace(name_, ""), \
                f"{parser.prog} {name_}: the help points to the option itself"


def _help_text(main, argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    assert code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("tool", ["vapt", "mgpath"])
@pytest.mark.parametrize("flag", ["--help", "--help-all"])
def test_lightning_help_is_plain_text(tool, flag, capsys):
    """The quick ``fit --help`` and LightningCLI's full one (``--help-all``, class docstrings included)."""
    out = _help_text(importlib.import_module(f"{tool}.cli").main, ["fit", flag], capsys)
    assert "--ckpt_path" in out or "--config" in out
    bad = sorted({m.group(0) for m in MARKUP.finditer(out)})
    assert not bad, f"{tool} fit {flag} shows markup {bad}"
