"""`mgpath` command line: dispatches each subcommand to the module that owns it.

Subcommands are imported lazily so that `mgpath tile` does not import the model code and vice versa. A user
error ends in one line naming what was wrong and exit status 2 (bad input); the traceback is shown only
with ``--debug`` (anywhere on the line) or ``MGPATH_DEBUG=1`` / ``VAPT_DEBUG=1``; any other failure ends in
one line and exit status 1. The format is the one of ``vapt`` (:mod:`vapt.cli.errors`).
"""
from __future__ import annotations

import sys

from vapt.cli.subcommands import run_tool

#: subcommand -> (module, function taking argv list, one-line help)
SUBCOMMANDS = {
    "tile": ("mgpath.commands.tile", "main", "segment tissue and tile slides into a coordinates h5 per slide"),
    "extract": ("mgpath.commands.extract", "main", "encode tiles with a frozen encoder into a features h5 per slide"),
    "prepare": ("mgpath.commands.prepare", "main", "tile then extract in one job folder with one summary (resumable)"),
    "encoders": ("mgpath.commands.encoders", "main", "list the tile-encoder presets (uni_v1, conch_v1, ...)"),
    "splits": ("mgpath.splits", "main", "make K-shot, patient-grouped, stratified folds from a labels CSV"),
    "fit": ("mgpath.lightning_cli", "main", "train MGPATH (LightningCLI)"),
    "validate": ("mgpath.lightning_cli", "main", "validate MGPATH (LightningCLI)"),
    "test": ("mgpath.lightning_cli", "main", "test MGPATH (LightningCLI)"),
    "predict": ("mgpath.lightning_cli", "main", "predict with MGPATH (LightningCLI)"),
    "folds": ("mgpath.folds", "main", "train and test over all folds; mean and std per metric"),
    "benchmark": ("mgpath.benchmark", "main", "MGPATH and the baselines over the same folds (resumable)"),
    "report": ("mgpath.report", "main", "table and plot of a benchmark folder (mean ± std per method)"),
    "zeroshot": ("mgpath.commands.zeroshot", "main", "classify slides from the class descriptions alone"),
    "import-official": ("mgpath.commands.import_official", "main", "convert an official MGPATH checkpoint into this model"),
    "heatmap": ("mgpath.commands.heatmap", "main", "draw prompt attention and transport mass over a slide"),
    "demo": ("mgpath.commands.demo", "main", "end-to-end demo on generated slides (CPU, a few minutes)"),
    "configs": ("vapt.fileio.resources", "mgpath_configs_main", "list (--list) or print the shipped WSI configs"),
}


_LIGHTNING = {"fit", "validate", "test", "predict"}


def main(argv: list[str] | None = None) -> int:
    return run_tool("mgpath", SUBCOMMANDS, argv, _LIGHTNING, lister="mgpath configs --list",
                    examples="--trainer.max_epochs 20  --model.init_args.lr 0.0005  --data.fold 1")


if __name__ == "__main__":
    sys.exit(main())
