"""The CLI reference of the docs site is rendered from the parsers (``docs/hooks/cli_reference.py``): every
subcommand of both tools gets its section with its own usage line, and the nav hook keeps only pages that
exist."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("cli_reference", REPO / "docs" / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_subcommand_has_its_help_in_the_reference(hook):
    from mgpath.cli import SUBCOMMANDS as MGPATH
    from vapt.cli.subcommands import SUBCOMMANDS as VAPT

    md = hook.render(full=False)
    sections = dict(re.findall(r"^### (\S+ \S+)\n\n.*?\n\n```text\n(usage: [^\n]*)", md, re.MULTILINE | re.DOTALL))
    expected = [f"vapt {n}" for n in VAPT] + [f"mgpath {n}" for n in MGPATH]
    assert sorted(sections) == sorted(expected)
    for name, usage in sections.items():
        assert usage.startswith(f"usage: {name} "), (name, usage)
    assert "## vapt\n" in md and "## mgpath\n" in md
    (REPO / "docs" / "cli.md").read_text().index(hook.MARKER)  # the page holds the marker the hook replaces


def test_nav_keeps_only_existing_pages(hook, tmp_path):
    (tmp_path / "a.md").write_text("# a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# b")
    nav = [{"A": "a.md"}, {"Gone": "gone.md"}, {"Group": [{"B": "sub/b.md"}, {"C": "sub/c.md"}]},
           {"Empty": [{"D": "d.md"}]}, "https://example.org"]
    config = hook.on_config({"docs_dir": str(tmp_path), "nav": nav})
    assert config["nav"] == [{"A": "a.md"}, {"Group": [{"B": "sub/b.md"}]}, "https://example.org"]


@pytest.mark.parametrize("package", ["vapt", "vapt.data"])
def test_api_docs_see_every_lazy_export(package):
    """The packages export names lazily (``_EXPORTS``); their ``if TYPE_CHECKING:`` imports, which the API
    reference (griffe) and type checkers read, name the same objects from the same modules."""
    import ast
    import importlib

    tree = ast.parse((REPO / package.replace(".", "/") / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name: node.module for node in block.body for alias in node.names}
    assert seen == importlib.import_module(package)._EXPORTS
