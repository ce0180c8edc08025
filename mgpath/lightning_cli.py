"""LightningCLI entry point: ``mgpath fit|validate|test|predict --config configs/wsi/<task>.yaml``.

The model block configures :class:`mgpath.module.MGPATHModule` (the default when the block has no
``class_path``) or any other :class:`mgpath.lit.SlideClassifier` named by ``model.class_path``, e.g. the
baselines of :mod:`mgpath.baselines` (``class_path: mgpath.baselines.ABMILModule``); the data block
:class:`mgpath.data.WSIFeatureDataModule`; ``data.classes`` and ``data.magnifications`` are linked into the
model. After ``fit`` the best checkpoint (best validation macro-F1, ties to the later epoch, see
:mod:`mgpath.selection`) is what ``mgpath test --ckpt_path`` takes; ``--ckpt_path .../last.ckpt`` with
``fit`` resumes bit-exactly (RNG states are in the checkpoint).
"""
from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from mgpath.data import WSIFeatureDataModule
from mgpath.lit import SlideClassifier

__all__ = ["MGPATHCLI", "main", "make_cli"]


class MGPATHCLI(LightningCLI):
    """LightningCLI with the class list and magnifications linked from the data to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"model": {"class_path": "mgpath.module.MGPATHModule"}})
        parser.link_arguments("data.classes", "model.init_args.classes")
        parser.link_arguments("data.magnifications", "model.init_args.magnifications")


def make_cli(argv: list[str], run: bool = True) -> MGPATHCLI:
    """Build the CLI from an argument list (``argv[0]`` is the subcommand when ``run``)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "mgpath"]  # LightningCLI warns when both sys.argv and args are given
    try:
        return MGPATHCLI(SlideClassifier, WSIFeatureDataModule, subclass_mode_model=True, args=argv, run=run,
                         seed_everything_default=2023, save_config_kwargs={"overwrite": True})
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> int:
    """``argv[0]`` is fit | validate | test | predict; the rest are LightningCLI options."""

    make_cli(list(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
