"""The quick ``--help`` of the LightningCLI subcommands (fit, validate, test, predict) of ``vapt`` and ``mgpath``.

LightningCLI builds its help from the model, data-module and trainer classes, which imports Lightning and
takes seconds. ``--help`` prints this summary instead, without that import; ``--help-all`` prints
LightningCLI's full list (every option of the model, the data module and the trainer, with the values of any
``--config`` given before it).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["ACTIONS", "HELP_ALL", "quick_help"]

#: the flag that asks for LightningCLI's own, complete help
HELP_ALL = "--help-all"

#: subcommand -> what it does
ACTIONS = {
    "fit": "Train a model (LightningCLI); --ckpt_path resumes a run.",
    "validate": "Run the validation loop on the model in --ckpt_path (LightningCLI).",
    "test": "Run the test loop on the model in --ckpt_path (LightningCLI).",
    "predict": "Predict with the model in --ckpt_path (LightningCLI).",
}


def quick_help(prog: str, subcommand: str, lister: str, examples: str,
               extras: Sequence[tuple[str, str, str]] = ()) -> str:
    """Help text of ``prog subcommand`` built without Lightning.

    Parameters
    ----------
    prog : str
        ``"vapt"`` or ``"mgpath"``.
    subcommand : str
        One of `ACTIONS`.
    lister : str
        The command that lists the shipped configs (``"vapt configs --list"``).
    examples : str
        Example overrides by dotted key (``"--trainer.max_epochs 10  --model.init_args.lr 0.5"``).
    extras : sequence of (flag, metavar, help)
        Options the tool adds to LightningCLI's (``--result_json FILE ...``).
    """
    ap = argparse.ArgumentParser(
        prog=f"{prog} {subcommand}", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} {subcommand} [-c CONFIG ...] [--print_config] [--KEY VALUE ...]",
        description=(f"{ACTIONS[subcommand]}\n\n"
                     f"Every value of a config can be set on the command line by its dotted key, e.g.\n  {examples}"),
        epilog=(f"{HELP_ALL} prints every option of the model, the data module and the trainer with its default\n"
                f"(after -c CONFIG: with the config's values); it loads Lightning, so it takes a few seconds."))
    ap.add_argument("-c", "--config", metavar="CONFIG",
                    help=f"a YAML config: a path or a shipped name ({lister}); give several to merge them, "
                         "later ones win")
    ap.add_argument("--print_config", action="store_true",
                    help="print the resolved config (every key with its value) and exit; redirect it to a file "
                         "to start your own config")
    ap.add_argument("--ckpt_path", metavar="PATH",
                    help="a checkpoint written by fit: the weights to use (validate, test, predict) or the run "
                         "to resume (fit)")
    ap.add_argument("--seed_everything", metavar="SEED", help="seed of python, numpy and torch (true: random)")
    ap.add_argument("--model", metavar="BLOCK", help="the model block: a class path, a YAML file, or --model.KEY VALUE")
    ap.add_argument("--data", metavar="BLOCK", help="the data block: a class path, a YAML file, or --data.KEY VALUE")
    ap.add_argument("--trainer", metavar="BLOCK", help="Lightning Trainer options: --trainer.KEY VALUE "
                    "(max_epochs, accelerator, devices, precision, default_root_dir, ...)")
    for flag, metavar, text in extras:
        ap.add_argument(flag, metavar=metavar, help=text)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    ap.add_argument("-h", "--help", action="store_true", help="show this summary and exit")
    ap.add_argument(HELP_ALL, action="store_true", help="show LightningCLI's complete help and exit")
    return ap.format_help()
