"""`mgpath` command line: dispatches each subcommand to the module that owns it.

Subcommands are imported lazily so that `mgpath tile` does not import the model code and vice versa.
"""
from __future__ import annotations

import sys

from vapt.cli import dispatch

#: subcommand -> (module, function taking argv list, one-line help)
SUBCOMMANDS = {
    "tile": ("mgpath.slides.tiling", "main", "segment tissue and tile slides into a coordinates h5 per slide"),
    "extract": ("mgpath.features", "main", "encode tiles with a frozen encoder into a features h5 per slide"),
    "encoders": ("mgpath.commands.encoders", "main", "list the tile-encoder presets (uni_v1, conch_v1, ...)"),
    "splits": ("mgpath.splits", "main", "make K-shot, patient-grouped, stratified folds from a labels CSV"),
    "fit": ("mgpath.lightning_cli", "main", "train MGPATH (LightningCLI)"),
    "validate": ("mgpath.lightning_cli", "main", "validate MGPATH (LightningCLI)"),
    "test": ("mgpath.lightning_cli", "main", "test MGPATH (LightningCLI)"),
    "predict": ("mgpath.lightning_cli", "main", "predict with MGPATH (LightningCLI)"),
    "folds": ("mgpath.folds", "main", "train and test over all folds; mean and std per metric"),
    "zeroshot": ("mgpath.zeroshot", "main", "classify slides from the class descriptions alone"),
    "import-official": ("mgpath.official", "main", "convert an official MGPATH checkpoint into this model"),
    "heatmap": ("mgpath.heatmap", "main", "draw prompt attention and transport mass over a slide"),
    "demo": ("mgpath.demo", "main", "end-to-end demo on generated slides (CPU, a few minutes)"),
}


_LIGHTNING = {"fit", "validate", "test", "predict"}


def main(argv: list[str] | None = None) -> int:
    return dispatch("mgpath", SUBCOMMANDS, argv, _LIGHTNING)


if __name__ == "__main__":
    sys.exit(main())
