"""``mgpath encoders``: list the tile-encoder presets (dimension, input, preprocessing, weights, status)."""
from __future__ import annotations

import json
import sys

from vapt.backbones import preset_table
from vapt.cli.flags import DialectParser
from vapt.reporting.tables import markdown_table as _markdown_rows

_NORMS = {"IMAGENET": "ImageNet", "OPENAI_CLIP": "OpenAI CLIP", "HALF": "0.5/0.5", "HOPTIMUS": "H-optimus",
          "HIBOU": "Hibou", "GENBIO": "GenBio"}


def _norm_name(norm) -> str:
    for attr, label in _NORMS.items():
        if tuple(norm) == getattr(preset_table, attr):
            return label
    return "from config.json"


def preset_rows() -> list[dict]:
    """One dict per preset: name, dim, input, transform, mean/std, vit, status, weights, licence, magnification.

    Read from :data:`vapt.backbones.preset_table.PRESET_INFO` (the builders' table), so torch is not imported.
    """
    rows = []
    for name, info in preset_table.PRESET_INFO.items():
        pre, unavailable = info["preprocess"], info.get("unavailable")
        hub = name in preset_table.HUB_CONFIG
        resize = f"{pre.resize or pre.size} " if pre.crop and (pre.resize or pre.size) != pre.size else ""
        transform = (f"resize {resize}{pre.interpolation}" + (f" + crop {pre.size}" if pre.crop else f" {pre.size}"))
        cfg = None if hub else pre.data_config()  # hub-config presets: known only from the publisher's folder
        rows.append({"name": name, "dim": info["dim"], "input": "config.json" if hub else pre.size,
                     "transform": "from config.json" if hub else transform,
                     "mean_std": "from config.json" if hub else _norm_name(pre.norm),
                     "input_size": None if hub else cfg["input_size"][-1],
                     "resize": None if hub else cfg["resize"], "crop": None if hub else cfg["crop"],
                     "interpolation": None if hub else cfg["interpolation"],
                     "mean": None if hub else list(cfg["mean"]), "std": None if hub else list(cfg["std"]),
                     "vapt_backbone": info.get("vit", True) and not unavailable,
                     "status": "available" if not unavailable else f"unavailable: {unavailable}",
                     "architecture": info["arch"], "weights": info["layout"], "source": info["source"],
                     "licence": info.get("licence", "unverified"),
                     "magnification": info.get("magnification", "unverified"), "notes": info.get("notes", "")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ["preset", "dim", "input", "transform", "mean/std", "vapt backbone", "weights (layout)", "get it",
            "licence", "magnification"]
    body = [[f"`{r['name']}`", r["dim"], r["input"], r["transform"], r["mean_std"], "-", r["status"], "-", "-", "-"]
            if r["status"] != "available"
            else [f"`{r['name']}`", r["dim"], r["input"], r["transform"], r["mean_std"],
                  "yes" if r["vapt_backbone"] else "no", r["weights"], r["source"], r["licence"], r["magnification"]]
            for r in rows]
    lines = _markdown_rows(head, body)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath encoders", description=__doc__)
    ap.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                    help="text (one line per preset), markdown (the table of docs/encoders.md) or json (every field)")
    a = ap.parse_args(argv)
    rows = preset_rows()
    if a.format == "json":
        print(json.dumps(rows, indent=1))
    elif a.format == "markdown":
        print(markdown_table(rows))
    else:
        for r in rows:
            if r["status"] != "available":
                print(f"{r['name']:<14} {r['dim']:>5}  {r['input']!s:>11}  {r['transform']:<30} {r['mean_std']:<16}"
                      f"  {r['status']}")
                continue
            print(f"{r['name']:<14} {r['dim']:>5}  {r['input']!s:>11}  {r['transform']:<30} {r['mean_std']:<16}"
                  f"{'  vapt backbone' if r['vapt_backbone'] else ''}")
        print("plus any timm model name (CNNs included) and open_clip:<name>; details: docs/encoders.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
