"""`vapt` command line: dispatches each subcommand to the module that owns it (imported lazily)."""
from __future__ import annotations

import importlib
import sys

from vapt.cli.errors import run_reporting_errors

#: subcommand -> (module, function taking argv list, one-line help)
SUBCOMMANDS = {
    "summary": ("vapt.reporting.summary", "main", "tuned / total parameter table of a prompt model"),
    "fit": ("vapt.training.lightning_cli", "main", "train (LightningCLI)"),
    "validate": ("vapt.training.lightning_cli", "main", "validate (LightningCLI)"),
    "test": ("vapt.training.lightning_cli", "main", "test (LightningCLI)"),
    "predict": ("vapt.training.lightning_cli", "main", "predict (LightningCLI)"),
    "tune": ("vapt.training.tune", "main", "lr x wd grid on train800/val200, then seeds on train800val200 -> test"),
    "report": ("vapt.reporting.report", "main", "results table (markdown + csv) and plot with paper deltas"),
    "configs": ("vapt.fileio.resources", "configs_main", "list (--list) or print the shipped configs"),
}
_LIGHTNING = {"fit", "validate", "test", "predict"}


def dispatch(prog: str, subcommands: dict, argv: list[str] | None, pass_name: set[str]) -> int:
    """Run ``subcommands[argv[0]]`` with the remaining arguments (and the name itself for ``pass_name``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(name) for name in subcommands) + 2
    usage = "\n".join([f"usage: {prog} SUBCOMMAND [options]", "", "subcommands:"]
                      + [f"  {name:<{width}} {help_}" for name, (_, _, help_) in subcommands.items()])
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in subcommands:
        print(f"{prog}: unknown subcommand {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    module_name, func_name, _ = subcommands[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func([name, *rest] if name in pass_name else rest) or 0)


def run_tool(tool: str, subcommands: dict, argv: list[str] | None, pass_name: set[str]) -> int:
    """``tool SUBCOMMAND ...`` with every failure reported as one line by :mod:`vapt.cli.errors` (exit 1 or 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def prog(args: list[str]) -> str:
        return f"{tool} {args[0]}" if args and not args[0].startswith("-") else tool

    return run_reporting_errors(prog, lambda rest: dispatch(tool, subcommands, rest, pass_name), argv)


def main(argv: list[str] | None = None) -> int:
    return run_tool("vapt", SUBCOMMANDS, argv, _LIGHTNING)


if __name__ == "__main__":
    sys.exit(main())
