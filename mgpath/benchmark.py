"""Run MGPATH and its baselines under one fold protocol (same splits, features, seeds, fold runner).

``mgpath benchmark --config configs/wsi/tcga_nsclc_16shot.yaml --methods mgpath,abmil,transmil,coop,zeroshot
--folds 0..4 --out runs/nsclc_bench [--data.* / --trainer.* overrides]``

For every method the model block of the config is replaced by the method's (``OUT/<method>/config.yaml``,
written once; the data and trainer blocks are shared), then :func:`mgpath.folds.run_folds` fits and tests
each fold in ``OUT/<method>/fold_k``. Resumable per method x fold: a finished fold (``result.json``) is not
rerun, a killed one restarts cleanly. ``mgpath report OUT`` then writes the comparison table and plot.

Methods (``--methods``): see :data:`METHODS`. The MIL baselines use their published default
hyper-parameters (see :mod:`mgpath.baselines.modules`) and the config's ``feature_dim``; CoOp and zero-shot
take the MGPATH block's text tower, descriptions and ``init_checkpoint``; the MGPATH ablations change one
setting of the MGPATH block. ``--model.*`` overrides are not accepted (they would not fit every method):
put method settings in the config.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import yaml

from vapt.cli.flags import DialectParser, add_config_options, parse_folds, print_configs
from vapt.fileio.atomic import write_text_atomic
from vapt.fileio.resources import resolve_config

__all__ = ["METHODS", "main", "method_config", "parse_folds", "run_benchmark"]

_TEXT_KEYS = ("descriptions", "text_model", "text_checkpoint", "text_model_cfg", "quick_gelu", "embed_dim",
              "init_checkpoint", "image_adaptor_hidden", "text_adaptor_hidden", "placement", "logit_scale",
              "lr", "weight_decay")
_MIL = {"abmil": "ABMILModule", "clam": "CLAMModule", "transmil": "TransMILModule", "dsmil": "DSMILModule"}

#: method -> one-line description
METHODS = {
    "mgpath": "MGPATH as configured",
    "mgpath_patch": "MGPATH ablation: patch level only (use_graph: false)",
    "mgpath_region": "MGPATH ablation: region level only (ratio_graph: 1.0)",
    "mgpath_no_ot": "MGPATH ablation: no OT, mean cosine (ot: {backend: uniform})",
    "abmil": "ABMIL, gated attention (Ilse et al. 2018)",
    "clam": "CLAM-SB with instance clustering (Lu et al. 2021)",
    "transmil": "TransMIL (Shao et al. 2021)",
    "dsmil": "DSMIL (Li et al. 2021)",
    "meanpool": "mean pooling + linear",
    "maxpool": "max pooling + linear",
    "coop": "CoOp: learnable context, mean-pooled slide feature, cosine logits (Zhou et al. 2022)",
    "zeroshot": "zero-shot: text tower + descriptions only, no training",
}


def method_config(base: dict, method: str) -> tuple[dict, bool]:
    """(full config with the method's model block, whether the method is trained)."""
    if method not in METHODS:
        raise ValueError(f"mgpath benchmark: unknown method {method!r}; choose from {', '.join(METHODS)}")
    cfg = copy.deepcopy(base)
    block = cfg.get("model") or {}
    if "class_path" in block:
        block = dict(block.get("init_args") or {})
    if "feature_dim" not in block:
        raise KeyError("mgpath benchmark: the config's model block has no feature_dim")
    train = True
    if method.startswith("mgpath"):
        args = dict(block)
        if method == "mgpath_patch":
            args["use_graph"] = False
        elif method == "mgpath_region":
            args["ratio_graph"] = 1.0
        elif method == "mgpath_no_ot":
            args["ot"] = {**(args.get("ot") or {}), "backend": "uniform"}
        model = {"class_path": "mgpath.module.MGPATHModule", "init_args": args}
    elif method in _MIL:
        model = {"class_path": f"mgpath.baselines.{_MIL[method]}", "init_args": {"feature_dim": block["feature_dim"]}}
    elif method in ("meanpool", "maxpool"):
        model = {"class_path": "mgpath.baselines.PoolingModule",
                 "init_args": {"feature_dim": block["feature_dim"], "pooling": method[:-4]}}
    else:
        args = {k: block[k] for k in ("feature_dim", *_TEXT_KEYS) if k in block}
        if method == "coop":
            model = {"class_path": "mgpath.baselines.CoOpModule", "init_args": args}
        else:
            args.pop("lr", None), args.pop("weight_decay", None)
            model = {"class_path": "mgpath.zeroshot.ZeroShotModule", "init_args": args}
            train = False
    cfg["model"] = model
    return cfg, train


def run_benchmark(config: str, methods: list[str], folds: list[int], out: str,
                  overrides: list[str] | None = None, overwrite: bool = False) -> dict:
    """Every method x fold (finished ones are read back); returns ``{method: summary table}``."""
    from mgpath.folds import run_folds

    bad = [o for o in (overrides or []) if o.startswith("--model.")]
    if bad:
        raise ValueError(f"mgpath benchmark: {bad[0]} would not fit every method; put model settings in "
                         f"{config}")
    base = yaml.safe_load(Path(config).read_text())
    index = Path(out) / "benchmark.json"  # method order for `mgpath report` (earlier methods kept)
    known = json.loads(index.read_text())["methods"] if index.is_file() else []
    write_text_atomic(index, json.dumps({"config": str(config), "methods": list(dict.fromkeys(
        [*known, *methods]))}, indent=1))
    tables = {}
    for method in methods:
        cfg, train = method_config(base, method)
        mdir = Path(out) / method
        path = mdir / "config.yaml"
        text = yaml.safe_dump(cfg, sort_keys=False)
        if (path.is_file() and path.read_text() != text and any(mdir.glob("fold_*/result.json"))
                and not overwrite):
            raise FileExistsError(f"mgpath benchmark: stale: {path} was written for another config; finished folds "
                                  f"would be mixed with new ones. Pass --overwrite, use another --out or remove {mdir}")
        write_text_atomic(path, text)
        print(f"== {method}: {METHODS[method]} ({'fit + test' if train else 'test only'}) ==")
        tables[method] = run_folds(str(path), folds, str(mdir), overrides, train=train, overwrite=overwrite)
    return tables


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath benchmark", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, help="an MGPATH config (model + data + trainer blocks)")
    ap.add_argument("--methods", default="mgpath,abmil,transmil,coop,zeroshot",
                    help=f"comma-separated, from: {', '.join(METHODS)}")
    ap.add_argument("--folds", nargs="+", default=["0..4"], help="folds to run: 0..4, or 0 1 2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="redo finished folds made with other settings or data")
    a, overrides = ap.parse_known_args(argv)
    if a.print_config:
        return print_configs(a.config, lambda c: resolve_config(c, ("", "wsi/"), lister="mgpath configs"))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"mgpath benchmark: unknown method {m!r}; choose from {', '.join(METHODS)}")
    run_benchmark(a.config, methods, parse_folds(a.folds), a.out, overrides, overwrite=a.overwrite)
    print(f"done; write the table with: mgpath report {a.out}")
    return 0
