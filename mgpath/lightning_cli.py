"""LightningCLI entry point: ``mgpath fit|validate|test|predict --config configs/wsi/<task>.yaml``.

The model block configures :class:`mgpath.module.MGPATHModule`, the data block
:class:`mgpath.data.WSIFeatureDataModule`; ``data.classes`` and ``data.magnifications`` are linked into the
model. After ``fit`` the best checkpoint (best validation macro-F1, see the configs' ModelCheckpoint) is what
``mgpath test --ckpt_path`` takes.
"""
from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from mgpath.data import WSIFeatureDataModule
from mgpath.module import MGPATHModule
from vapt.resources import ResourceError, resolve_config_args

__all__ = ["MGPATHCLI", "main"]


class MGPATHCLI(LightningCLI):
    """LightningCLI with the class list and magnifications linked from the data to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.classes", "model.classes")
        parser.link_arguments("data.magnifications", "model.magnifications")


def make_cli(argv: list[str], run: bool = True) -> MGPATHCLI:
    """Build the CLI from an argument list (``argv[0]`` is the subcommand when ``run``).

    ``--config`` takes a path or a shipped config name (``tcga_nsclc_16shot``, see ``mgpath configs --list``).
    """
    argv = resolve_config_args(argv, prefixes=("", "wsi/"), lister="mgpath configs")
    return MGPATHCLI(MGPATHModule, WSIFeatureDataModule, args=argv, run=run, seed_everything_default=2023,
                     save_config_kwargs={"overwrite": True})


def main(argv: list[str] | None = None) -> int:
    """``argv[0]`` is fit | validate | test | predict; the rest are LightningCLI options."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "mgpath", *argv]  # LightningCLI warns when sys.argv and args differ
    try:
        make_cli(argv)
    except ResourceError as e:  # --config names neither a file nor a shipped config
        print(f"mgpath {argv[0] if argv else ''}: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
