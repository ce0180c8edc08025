"""`vapt` command line: dispatches each subcommand to the module that owns it (imported lazily)."""
from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, function taking argv list, one-line help)
SUBCOMMANDS = {
    "summary": ("vapt.summary", "main", "tuned / total parameter table of a prompt model"),
    "fit": ("vapt.lightning_cli", "main", "train (LightningCLI)"),
    "validate": ("vapt.lightning_cli", "main", "validate (LightningCLI)"),
    "test": ("vapt.lightning_cli", "main", "test (LightningCLI)"),
    "predict": ("vapt.lightning_cli", "main", "predict (LightningCLI)"),
    "tune": ("vapt.tune", "main", "lr x wd grid on train800/val200, then seeds on train800val200 -> test"),
    "report": ("vapt.report", "main", "results table (markdown + csv) and plot with paper deltas"),
}
_LIGHTNING = {"fit", "validate", "test", "predict"}


def _usage() -> str:
    lines = ["usage: vapt SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"vapt: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func([name, *rest] if name in _LIGHTNING else rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
