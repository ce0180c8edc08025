"""`vapt summary MODEL --method ...`: the tuned / total parameter table the PEFT papers report.

Any registered method (``--method``, see `vapt.peft`); the VPT / VAPT flags keep their names and any other
method option is given as ``--set KEY=VALUE`` (values read as YAML: ``--set rank=4 --set targets=qv``).
The model code (torch, timm, the methods) is imported after the arguments are parsed, so ``--help`` answers at
once.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import yaml

from vapt.cli.flags import DialectParser
from vapt.reporting.tables import markdown_table

if TYPE_CHECKING:
    from vapt.model import PromptedViT

#: VPT / VAPT flags -> config field (given only when set on the command line)
_FLAG_FIELDS = {"num_tokens": "num_tokens", "kernel_size": "kernel_size", "hidden_dim": "hidden_dim",
                "vpt_depth": "vpt_depth"}


def parameter_table(model: PromptedViT) -> list[tuple[str, int, int]]:
    """Rows ``(module, trainable, total)``: the backbone, the method's parameters by role, the head."""
    rows = [("backbone", *_count(model.backbone.parameters()))]
    prefix = model.method.attribute
    rows += [(f"{prefix}.{role}", *_count(ps)) for role, ps in model.method.parameter_groups().items()]
    rows.append(("head", *_count(model.head.parameters())))
    return rows


def _count(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def format_table(model: PromptedViT) -> str:
    """Markdown table of tuned and total parameters, with tuned % of the backbone (the papers' convention)."""
    rows = parameter_table(model)
    backbone_total = rows[0][2]
    tuned_all = sum(r[1] for r in rows)
    tuned_no_head = sum(r[1] for r in rows if r[0] != "head")
    total_all = sum(r[2] for r in rows)
    body = [(name, f"{tuned:,}", f"{total:,}", f"{100.0 * tuned / backbone_total:.4f}") for name, tuned, total in rows]
    body += [("**all**", f"{tuned_all:,}", f"{total_all:,}", f"{100.0 * tuned_all / backbone_total:.4f}"),
             ("**without head**", f"{tuned_no_head:,}", "", f"{100.0 * tuned_no_head / backbone_total:.4f}")]
    return "\n".join(markdown_table(["module", "tuned", "total", "tuned % of backbone"], body, "lrrr"))


def build_parser() -> argparse.ArgumentParser:
    p = DialectParser(prog="vapt summary", description=(
        "Tuned and total parameters per module of a model, as the PEFT papers report them. Any registered "
        "method; the VPT / VAPT options keep their names and any other option of the method is given as "
        "--set KEY=VALUE (values read as YAML: --set rank=4 --set targets=qv). Only shapes are built: no "
        "weights are loaded."))
    p.add_argument("model", help="timm ViT name or open_clip:<name>")
    p.add_argument("--method", default="vapt", help="a registered method: linear, full, bitfit, partial, vpt, "
                   "vapt (default), lora, adapter, ... (an unknown name lists them)")
    p.add_argument("--num_tokens", type=int, default=None, help="prompt tokens N (default: the method's)")
    p.add_argument("--shallow", action="store_true", help="VPT-shallow instead of deep")
    p.add_argument("--kernel_size", type=int, default=None, help="VAPT token-wise projector kernel (default: the method's)")
    p.add_argument("--hidden_dim", type=int, default=None, help="VAPT channel-wise MLP width (default: the method's)")
    p.add_argument("--vpt_depth", type=int, default=None,
                   help="VAPT: layers with static prompt sets before the adaptive ones (default: the method's)")
    p.add_argument("--no_share_projector", action="store_true", help="VAPT: one feature projector per layer")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method's config (repeatable)")
    p.add_argument("--num_classes", type=int, default=100, help="classes of the linear head (100)")
    p.add_argument("--img_size", type=int, default=None, help="input size (default: the model's)")
    return p


def method_options(args: argparse.Namespace) -> dict:
    """The config keywords the command line sets (flags given + ``--set`` pairs)."""
    opts = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items() if getattr(args, flag) is not None}
    if args.shallow:
        opts["deep"] = False
    if args.no_share_projector:
        opts["share_projector"] = False
    for pair in args.options:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE; got {pair!r}.")
        opts[key.strip()] = yaml.safe_load(value)
    return opts


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from vapt.model import build_model
    from vapt.peft import make_config

    try:
        cfg = make_config(args.method, **method_options(args))
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(args.model, num_classes=args.num_classes, prompt=cfg, img_size=args.img_size)
    grid = model.backbone.grid_size()
    n = getattr(cfg, "num_tokens", None)
    print(f"{args.model}  method={args.method}{'' if n is None or args.method in ('linear', 'full') else f'  N={n}'}"
          f"  grid={grid[0]}x{grid[1]}  classes={args.num_classes}")
    print(format_table(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
