"""mkdocs hook: the CLI reference page is rendered from the command-line parsers at build time, and the nav
lists only the pages that exist.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; it is replaced by the ``--help`` of every
subcommand of ``vapt`` and ``mgpath`` (the dispatchers' own tables, so a new subcommand appears by itself),
plus LightningCLI's complete ``--help-all`` of ``fit`` in a collapsed block. Importable without mkdocs:
``render()`` returns the markdown.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys

MARKER = "<!-- cli-reference -->"
#: tool -> the module holding its SUBCOMMANDS table
TOOLS = {"vapt": "vapt.cli.subcommands", "mgpath": "mgpath.cli"}


def _capture(prog: str, argv: list[str]) -> str:
    """Everything ``prog argv`` prints (stdout and stderr), with ``sys.argv[0]`` set to ``prog``."""
    main = __import__(f"{prog}.cli", fromlist=["main"]).main
    buf, saved = io.StringIO(), sys.argv
    sys.argv = [prog, *argv]
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                main(list(argv))
            except SystemExit:
                pass
    finally:
        sys.argv = saved
    return buf.getvalue().rstrip()


def _block(text: str, indent: str = "") -> str:
    lines = ["```text", *text.splitlines(), "```"]
    return "\n".join(indent + line if line else line for line in lines)


def render(full: bool = True) -> str:
    """Markdown of both tools: a section per tool, a subsection per subcommand with its ``--help``.

    ``full`` adds LightningCLI's complete option list of ``fit`` (imports Lightning)."""
    os.environ["COLUMNS"] = "100"  # argparse wraps help at this width
    out = []
    for prog, table in TOOLS.items():
        subcommands = __import__(table, fromlist=["SUBCOMMANDS"]).SUBCOMMANDS
        out += [f"## {prog}", "", _block(_capture(prog, ["--help"])), ""]
        for name, (_, _, summary) in subcommands.items():
            out += [f"### {prog} {name}", "", summary[:1].upper() + summary[1:] + ".", "",
                    _block(_capture(prog, [name, "--help"])), ""]
            if full and name == "fit":
                out += [f'??? note "{prog} fit --help-all: every option of the model, data and trainer"', "",
                        _block(_capture(prog, [name, "--help-all"]), "    "), ""]
    return "\n".join(out)


def on_config(config, **kwargs):
    """Drop nav entries whose page does not exist (pages other work adds appear once their file is there)."""
    docs = config["docs_dir"]

    def keep(item):
        if isinstance(item, str):
            return item if item.startswith(("http://", "https://")) or os.path.isfile(os.path.join(docs, item)) else None
        if isinstance(item, dict):
            kept = {}
            for title, value in item.items():
                value = [v for v in (keep(x) for x in value) if v] if isinstance(value, list) else keep(value)
                if value:
                    kept[title] = value
            return kept or None
        return item

    if config.get("nav"):
        config["nav"] = [x for x in (keep(i) for i in config["nav"]) if x]
    return config


def on_page_markdown(markdown, page, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
