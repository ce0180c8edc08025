"""Convert a checkpoint of the official MGPATH code into this project's model.

Reads a fine-tuned s_<fold>_checkpoint.pt or the PLIP-G alignment file (then --alignment is not needed) and
writes OUT (.pt: the tensors and the model settings) and OUT with .yaml (the model block for
`mgpath fit --config <task>.yaml --config OUT.yaml`). By default the official context placement and OT
stopping rule are kept, so an official checkpoint gives the official outputs; --no_compat re-embeds the
descriptions with the corrected insertion (needs the alignment file's token embeddings).

example:
  mgpath import-official --ckpt_path s_0_checkpoint.pt --descriptions data/prompts/tcga_nsclc.json \
      --classes LUAD LUSC --out mgpath_fold0.pt
"""
from __future__ import annotations

import argparse
import sys

from vapt.cli.flags import DialectParser

__all__ = ["build_parser", "main"]


def build_parser() -> DialectParser:
    ap = DialectParser(prog="mgpath import-official", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt_path", required=True, deprecated=("--checkpoint",), help="official fine-tuned (s_k_checkpoint.pt) or alignment file")
    ap.add_argument("--alignment", default=None, help="PLIP-G alignment checkpoint (token/position embeddings)")
    ap.add_argument("--descriptions", required=True, help="prompt file used in training (official CSV or JSON)")
    ap.add_argument("--classes", nargs="+", required=True, help="class names in label order, e.g. LUAD LUSC")
    ap.add_argument("--magnifications", nargs="+", default=["5x", "10x"], help="magnifications, low to high (5x 10x)")
    ap.add_argument("--heads", type=int, default=None, help="text attention heads (default width // 64)")
    ap.add_argument("--no_compat", action="store_true", help="use the correct context insertion instead")
    ap.add_argument("--out", required=True, help="output .pt with {'state_dict', 'config'}")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``mgpath import-official``: parse (``--help`` needs no model code), then convert."""
    args = build_parser().parse_args(argv)
    from mgpath.official import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
