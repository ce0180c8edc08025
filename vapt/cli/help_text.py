"""Help texts as plain text: docstring markup (````x````, ``:func:`x```, ``*x*``) stripped before it reaches a
terminal. :class:`PlainHelpFormatter` serves argparse parsers; :func:`plain_formatter` makes the same of any
formatter class (jsonargparse's for LightningCLI)."""
from __future__ import annotations

import argparse
import re

__all__ = ["PlainHelpFormatter", "plain", "plain_formatter"]

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|ref|exc):`(~?[^`]+)`")
_LITERAL = re.compile(r"``([^`]*)``")
_EMPHASIS = re.compile(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])")


def plain(text: str | None) -> str | None:
    """``text`` without reStructuredText roles, literals and emphasis (their words kept)."""
    if not text:
        return text
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if m.group(1).startswith("~") else m.group(1), text)
    text = _LITERAL.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


def plain_formatter(base: type) -> type:
    """A subclass of the argparse formatter ``base`` that prints descriptions and option help as plain text."""

    class Plain(base):
        def _format_text(self, text):
            return super()._format_text(plain(text))

        def _expand_help(self, action):
            return plain(super()._expand_help(action))

        def start_section(self, heading):
            super().start_section(plain(heading))

    Plain.__name__ = f"Plain{base.__name__}"
    return Plain


#: descriptions keep their line breaks (module docstrings are written as paragraphs and lists)
PlainHelpFormatter = plain_formatter(argparse.RawDescriptionHelpFormatter)
