"""`vapt summary MODEL --method ...`: the tuned / total parameter table the VPT and VAPT papers report."""
from __future__ import annotations

import argparse
import sys

import torch

from vapt.cli.flags import DialectParser
from vapt.model import PromptedViT, build_model
from vapt.prompts import METHODS, PromptConfig
from vapt.reporting.tables import markdown_table


def parameter_table(model: PromptedViT) -> list[tuple[str, int, int]]:
    """Rows ``(module, trainable, total)`` per top-level part, with the prompt generator split by role."""
    rows = [("backbone", *_count(model.backbone.parameters()))]
    if model.prompts is not None:
        groups: dict[str, list] = {}
        for name, p in model.prompts.named_parameters():
            groups.setdefault(_prompt_role(name), []).append(p)
        rows += [(f"prompts.{role}", *_count(ps)) for role, ps in groups.items()]
    rows.append(("head", *_count(model.head.parameters())))
    return rows


def _prompt_role(name: str) -> str:
    for prefix in ("prompt_embeddings", "deep_prompt_embeddings", "prompt_proj", "norms", "downsamples", "projectors"):
        if name.startswith(prefix):
            return prefix
    return name


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
    p = DialectParser(prog="vapt summary", description=__doc__)
    p.add_argument("model", help="timm ViT name or open_clip:<name>")
    p.add_argument("--method", choices=METHODS, default="vapt")
    p.add_argument("--num_tokens", type=int, default=10)
    p.add_argument("--shallow", action="store_true", help="VPT-shallow instead of deep")
    p.add_argument("--kernel_size", type=int, default=2)
    p.add_argument("--hidden_dim", type=int, default=8)
    p.add_argument("--vpt_depth", type=int, default=1)
    p.add_argument("--no_share_projector", action="store_true")
    p.add_argument("--num_classes", type=int, default=100)
    p.add_argument("--img_size", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = PromptConfig(method=args.method, num_tokens=args.num_tokens, deep=not args.shallow,
                       kernel_size=args.kernel_size, hidden_dim=args.hidden_dim, vpt_depth=args.vpt_depth,
                       share_projector=not args.no_share_projector)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(args.model, num_classes=args.num_classes, prompt=cfg, img_size=args.img_size)
    grid = model.backbone.grid_size()
    print(f"{args.model}  method={args.method}{'' if args.method not in ('vpt', 'vapt') else f'  N={args.num_tokens}'}"
          f"  grid={grid[0]}x{grid[1]}  classes={args.num_classes}")
    print(format_table(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
