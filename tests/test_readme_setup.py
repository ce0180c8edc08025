"""The README's two set-up commands: exactly two lines at its top, and CI runs the second one verbatim after
installing what the first one and the ``dev`` extra install."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_lines() -> list[str]:
    block = re.search(r"## Set up\s+```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no '## Set up' bash block"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_command():
    install_demo, tests = _setup_lines()
    assert "vapt fit --config configs/demo.yaml" in install_demo and tests.startswith('pip install -e ".[dev]"')
    test_command = tests.split(" && ", 1)[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_command)}( |$)", ci, re.M), f"{test_command!r} is not what .ci/run runs"
    for doc in ("docs/index.md", "docs/install.md"):
        assert test_command in (REPO / doc).read_text(), f"{doc} shows another test command"


def test_the_test_commands_plugins_are_in_the_dev_extra():
    test_command = _setup_lines()[1]
    dev = re.search(r"^dev = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.S | re.M).group(1)
    assert " -n 2 " in test_command  # two worker processes: pytest-xdist, with a tested range
    for plugin in ("pytest", "pytest-timeout", "pytest-xdist"):
        assert re.search(rf'"{plugin}>=[\d.]+,<\d+"', dev), f"{plugin} has no tested range in the dev extra"
