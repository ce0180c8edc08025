"""`vapt` command line: dispatches each subcommand to the module that owns it (imported lazily).

``--help`` of the LightningCLI subcommands is answered here without importing Lightning
(:mod:`vapt.cli.lightning_help`); ``--help-all`` asks LightningCLI for its complete help.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from vapt.cli.errors import run_reporting_errors
from vapt.cli.lightning_help import HELP_ALL, quick_help
from vapt.quiet import no_lightning_tips

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

#: options `vapt.training.lightning_cli.VaptCLI` adds to LightningCLI's, for the quick --help (a test checks
#: that every option the quick help names is one LightningCLI accepts)
LIGHTNING_EXTRAS = (
    ("--result_json", "FILE", "write the subcommand's final metrics to this JSON file"),
    ("--predictions_csv", "FILE", ("predict: where the path,label,label_name,pred,pred_name,prob rows go "
                                   "(default <default_root_dir>/predictions.csv)")),
    ("--predict_images", "PATH", ("predict: a folder (searched recursively) or a list file of images instead of "
                                  "the data module's test split")),
    ("--test_after_fit", "BOOL", "fit: test the last-epoch model afterwards (the official protocol reports it)"),
)
VAPT_EXAMPLES = ("--trainer.max_epochs 10  --model.init_args.lr 0.5  --data.init_args.batch_size 32\n"
                 "(short forms: --model.lr 0.5, --data.batch_size 32)")


def dispatch(prog: str, subcommands: dict, argv: list[str] | None, pass_name: set[str], lister: str = "",
             examples: str = "", extras: Sequence[tuple[str, str, str]] = ()) -> int:
    """Run ``subcommands[argv[0]]`` with the remaining arguments (and the name itself for ``pass_name``).

    ``pass_name`` are the LightningCLI subcommands: their ``-h/--help`` prints `quick_help` (with ``lister``,
    the command listing the shipped configs, ``examples`` of overrides and the tool's ``extras`` options)
    without importing them, and ``--help-all`` is handed to LightningCLI as ``--help``."""
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
    if name in pass_name:
        if HELP_ALL in rest:
            rest = ["--help" if a == HELP_ALL else a for a in rest]
        elif "-h" in rest or "--help" in rest:
            print(quick_help(prog, name, lister or f"{prog} configs --list", examples, extras), end="")
            return 0
    module_name, func_name, _ = subcommands[name]
    func = getattr(importlib.import_module(module_name), func_name)
    with no_lightning_tips():
        return int(func([name, *rest] if name in pass_name else rest) or 0)


def run_tool(tool: str, subcommands: dict, argv: list[str] | None, pass_name: set[str], **help_options) -> int:
    """``tool SUBCOMMAND ...`` with every failure reported as one line by :mod:`vapt.cli.errors` (exit 1 or 2);
    ``help_options`` (``lister``, ``examples``, ``extras``) go to `dispatch`."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def prog(args: list[str]) -> str:
        return f"{tool} {args[0]}" if args and not args[0].startswith("-") else tool

    return run_reporting_errors(prog, lambda rest: dispatch(tool, subcommands, rest, pass_name, **help_options),
                                argv)


def main(argv: list[str] | None = None) -> int:
    return run_tool("vapt", SUBCOMMANDS, argv, _LIGHTNING, examples=VAPT_EXAMPLES, extras=LIGHTNING_EXTRAS)


if __name__ == "__main__":
    sys.exit(main())
