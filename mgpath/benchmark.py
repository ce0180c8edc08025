"""Run MGPATH and its baselines under one fold protocol (same splits, features, seeds, fold runner).

``mgpath benchmark --config configs/wsi/tcga_nsclc_16shot.yaml --methods mgpath,abmil,transmil,coop,zeroshot
--folds 0..4 --out runs/nsclc_bench [--data.* / --trainer.* overrides]``

For every method the model block of the config is replaced by the method's (``OUT/<method>/config.yaml``,
written once; the data and trainer blocks are shared), then :func:`mgpath.folds.run_folds` fits and tests
each fold in ``OUT/<method>/fold_k``. Resumable per method x fold: a finished fold (``result.json``) is not
rerun, a killed one restarts cleanly. ``mgpath report OUT`` then writes the comparison table and plot.

Methods (``--methods``): see :data:`METHODS`. The MIL baselines use their published default
hyper-parameters (see :mod:`mgpath.baselines.modules`) and the config's ``feature_dim``; CoOp and zero-shot
take the MGPATH block's text tower, descriptions and ``init_checkpoint``; ViLa-MIL its descriptions and text
tower, TOP its text tower (their own settings, e.g. ``text_model: RN50`` and TOP's ``prompts`` file, in the
``methods:`` block); the MGPATH ablations change one setting of the MGPATH block. The publishers' zero-shot
rows (``zeroshot_conch``, ``zeroshot_quiltnet``, ``zeroshot_plip``) need ``prompts`` and ``text_checkpoint``
in the ``methods:`` block and tiles extracted with the same model's image tower. MSCPT (``mscpt``) needs
``descriptions``, ``clip_checkpoint`` (the HF CLIPModel folder) and ``select_prompts`` in the ``methods:``
block, features before CLIP's projection (``--encoder plip_pooled``) and the slides the features name (its
5x tile images are chosen and cached in ``OUT/mscpt/tiles_5x``).

Each method's own settings go in a ``methods:`` block of the benchmark config (read only by ``mgpath
benchmark``; checked against the method's constructor, with did-you-mean), e.g.::

    methods:
      clam: {k_sample: 4, lr: 0.001, recipe: official}
      transmil: {recipe: official}
      mgpath_patch: {lr: 0.0005}

They are written into ``OUT/<method>/config.yaml`` and recorded as ``settings`` (with the model's
``class_path``) in every ``OUT/<method>/fold_k/result.json``. ``--model.*`` overrides are not accepted (they
would not fit every method): put method settings in that block.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import json
from pathlib import Path

import yaml

from vapt.cli.flags import DialectParser, add_config_options, parse_folds, print_configs
from vapt.fileio.atomic import write_text_atomic
from vapt.fileio.resources import resolve_config

__all__ = ["METHODS", "SETTINGS_KEY", "main", "method_config", "method_settings", "parse_folds",
           "run_benchmark"]

#: the benchmark config's block of per-method settings (``methods: {clam: {k_sample: 4}}``)
SETTINGS_KEY = "methods"

_TEXT_KEYS = ("descriptions", "text_model", "text_checkpoint", "text_model_cfg", "quick_gelu", "embed_dim",
              "init_checkpoint", "image_adaptor_hidden", "text_adaptor_hidden", "placement", "logit_scale",
              "lr", "weight_decay")
_VILA_KEYS = ("descriptions", "feature_dim", "text_model", "text_checkpoint", "text_model_cfg", "quick_gelu")
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
    "vilamil": "ViLa-MIL: dual-scale prototypes + prompted text, text attends to the image (Shi et al. 2024)",
    "top": "TOP: two-level prompt learning, prototype pooling by instance prompts (Qu et al. 2023)",
    "mscpt": "MSCPT: prompted CLIP towers on 5x tile images + 20x features, tile GCNs (Han et al. 2025)",
    "zeroshot": "zero-shot: text tower + descriptions only, no training",
    "zeroshot_conch": "CONCH zero-shot: its towers, prompt ensemble, top-j tile pooling (Lu et al. 2024)",
    "zeroshot_quiltnet": "QuiltNet zero-shot: its towers, prompt ensemble, top-j tile pooling (Ikezogwo et al. 2023)",
    "zeroshot_plip": "PLIP zero-shot: its towers, its prompt, top-j tile pooling (Huang et al. 2023)",
}

#: zero-shot method -> the vision-language model whose text tower it runs
TOWER_ZEROSHOT = {"zeroshot_conch": "conch_v1", "zeroshot_quiltnet": "quiltnet", "zeroshot_plip": "plip"}

#: settings MSCPT cannot run without (the ``methods: {mscpt: ...}`` block)
MSCPT_NEEDS = ("descriptions", "clip_checkpoint", "select_prompts")


def _unknown_method(name: str, source: str = "") -> ValueError:
    return ValueError(f"mgpath benchmark: {source}unknown method {name!r}{_did_you_mean(name, METHODS)}; choose "
                      f"from {', '.join(METHODS)}")


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def method_settings(base: dict, source: str = "the config") -> dict[str, dict]:
    """The validated ``methods:`` block of a benchmark config: ``{method: {setting: value}}``.

    Unknown methods and settings that the method's model class does not take are refused, naming the
    closest valid names."""
    block = base.get(SETTINGS_KEY) or {}
    if not isinstance(block, dict):
        raise TypeError(f"mgpath benchmark: {source}: '{SETTINGS_KEY}:' must map method names to settings, e.g. "
                         f"'{SETTINGS_KEY}: {{clam: {{k_sample: 4}}}}'")
    out = {}
    for method, settings in block.items():
        if method not in METHODS:
            raise ValueError(f"mgpath benchmark: {source}: '{SETTINGS_KEY}: {method}' is not a method"
                             f"{_did_you_mean(str(method), METHODS)} (methods: {', '.join(METHODS)})")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise TypeError(f"mgpath benchmark: {source}: '{SETTINGS_KEY}: {method}' must be a mapping of "
                             f"settings, e.g. {{lr: 0.001}}")
        class_path = _class_path(method)
        # jsonargparse: imported when a benchmark runs, not for --help
        from vapt.training.config_keys import _init_params

        accepted = set(_init_params(class_path)) - {"classes", "magnifications"}
        for key in settings:
            if key not in accepted:
                raise ValueError(f"mgpath benchmark: {source}: '{key}' is not a setting of {method} "
                                 f"({class_path.rsplit('.', 1)[-1]}){_did_you_mean(str(key), accepted)}")
        out[method] = dict(settings)
    return out


def _class_path(method: str) -> str:
    if method.startswith("mgpath"):
        return "mgpath.module.MGPATHModule"
    if method in _MIL:
        return f"mgpath.baselines.{_MIL[method]}"
    if method in ("meanpool", "maxpool"):
        return "mgpath.baselines.PoolingModule"
    if method in ("vilamil", "top"):
        return f"mgpath.baselines.{'ViLaMILModule' if method == 'vilamil' else 'TOPModule'}"
    if method in TOWER_ZEROSHOT:
        return "mgpath.baselines.TowerZeroShotModule"
    if method == "mscpt":
        return "mgpath.baselines.MSCPTModule"
    return "mgpath.baselines.CoOpModule" if method == "coop" else "mgpath.zeroshot.ZeroShotModule"


def method_config(base: dict, method: str) -> tuple[dict, bool]:
    """(full config with the method's model block and its ``methods:`` settings, whether it is trained)."""
    if method not in METHODS:
        raise _unknown_method(method)
    settings = method_settings(base).get(method, {})
    cfg = copy.deepcopy({k: v for k, v in base.items() if k != SETTINGS_KEY})
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
        model = {"class_path": _class_path(method), "init_args": {"feature_dim": block["feature_dim"]}}
    elif method in ("meanpool", "maxpool"):
        model = {"class_path": _class_path(method),
                 "init_args": {"feature_dim": block["feature_dim"], "pooling": method[:-4]}}
    elif method == "vilamil":
        model = {"class_path": _class_path(method), "init_args": {k: block[k] for k in _VILA_KEYS if k in block}}
    elif method == "top":
        if "prompts" not in settings:
            raise ValueError("mgpath benchmark: TOP needs its prompt file: add 'methods: {top: {prompts: "
                             "top_prompts.json}}' to the config (see mgpath.baselines.top.read_top_prompts)")
        keys = [k for k in _VILA_KEYS if k != "descriptions"]
        model = {"class_path": _class_path(method), "init_args": {k: block[k] for k in keys if k in block}}
    elif method == "mscpt":
        need = [k for k in MSCPT_NEEDS if k not in settings]
        if need:
            raise ValueError(f"mgpath benchmark: mscpt needs {', '.join(need)} in the config: 'methods: {{mscpt: "
                             "{descriptions: DESCRIPTIONS.json, clip_checkpoint: PLIP_FOLDER, select_prompts: "
                             "PROMPTS.json}}' (docs/baselines.md, MSCPT)")
        model = {"class_path": _class_path(method), "init_args": {"feature_dim": block["feature_dim"]}}
    elif method in TOWER_ZEROSHOT:
        need = [k for k in ("prompts", "text_checkpoint") if k not in settings]
        if need:
            raise ValueError(f"mgpath benchmark: {method} needs {' and '.join(need)} in the config: 'methods: "
                             f"{{{method}: {{prompts: PROMPTS.json, text_checkpoint: "
                             f"PATH}}}}' (the publisher's weights; the tiles extracted with --encoder "
                             f"{TOWER_ZEROSHOT[method]})")
        model = {"class_path": _class_path(method),
                 "init_args": {"feature_dim": block["feature_dim"], "text_model": TOWER_ZEROSHOT[method]}}
        train = False
    else:
        args = {k: block[k] for k in ("feature_dim", *_TEXT_KEYS) if k in block}
        if method == "coop":
            model = {"class_path": "mgpath.baselines.CoOpModule", "init_args": args}
        else:
            args.pop("lr", None), args.pop("weight_decay", None)
            model = {"class_path": "mgpath.zeroshot.ZeroShotModule", "init_args": args}
            train = False
    model["init_args"].update(copy.deepcopy(settings))
    cfg["model"] = model
    return cfg, train


def _record_settings(mdir: Path, folds: list[int], model: dict, settings: dict) -> None:
    """Add the method's ``class_path`` and ``settings`` to each finished fold's ``result.json``."""
    for k in folds:
        path = mdir / f"fold_{k}" / "result.json"
        if path.is_file():
            row = json.loads(path.read_text())
            if (row.get("class_path"), row.get("settings")) != (model["class_path"], settings):
                row.update(class_path=model["class_path"], settings=settings)
                write_text_atomic(path, json.dumps(row, indent=1))


def run_benchmark(config: str, methods: list[str], folds: list[int], out: str,
                  overrides: list[str] | None = None, overwrite: bool = False) -> dict:
    """Every method x fold (finished ones are read back); returns ``{method: summary table}``."""
    from mgpath.folds import run_folds

    bad = [o for o in (overrides or []) if o.startswith("--model.")]
    if bad:
        raise ValueError(f"mgpath benchmark: {bad[0]} would not fit every method; put model settings in "
                         f"{config}")
    base = yaml.safe_load(Path(config).read_text())
    settings = method_settings(base, str(config))
    index = Path(out) / "benchmark.json"  # method order for `mgpath report` (earlier methods kept)
    known = json.loads(index.read_text())["methods"] if index.is_file() else []
    write_text_atomic(index, json.dumps({"config": str(config), "methods": list(dict.fromkeys(
        [*known, *methods]))}, indent=1))
    tables = {}
    for method in methods:
        cfg, train = method_config(base, method)
        mdir = Path(out) / method
        if method == "mscpt":  # the chosen 5x tiles are shared by the folds
            cfg["model"]["init_args"].setdefault("tiles_dir", str(mdir / "tiles_5x"))
        path = mdir / "config.yaml"
        text = yaml.safe_dump(cfg, sort_keys=False)
        if (path.is_file() and path.read_text() != text and any(mdir.glob("fold_*/result.json"))
                and not overwrite):
            raise FileExistsError(f"mgpath benchmark: stale: {path} was written for another config; finished folds "
                                  f"would be mixed with new ones. Pass --overwrite, use another --out or remove {mdir}")
        write_text_atomic(path, text)
        print(f"== {method}: {METHODS[method]} ({'fit + test' if train else 'test only'}) ==")
        tables[method] = run_folds(str(path), folds, str(mdir), overrides, train=train, overwrite=overwrite)
        _record_settings(mdir, folds, cfg["model"], settings.get(method, {}))
    return tables


def main(argv: list[str] | None = None) -> int:
    ap = DialectParser(prog="mgpath benchmark", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(ap, help="an MGPATH config (model + data + trainer blocks)")
    ap.add_argument("--methods", default="mgpath,abmil,transmil,coop,zeroshot",
                    help=f"comma-separated, from: {', '.join(METHODS)}")
    ap.add_argument("--folds", nargs="+", default=["0..4"], help="folds to run: 0..4, or 0 1 2")
    ap.add_argument("--out", required=True, help="output folder: <method>/fold_k/ per method and fold")
    ap.add_argument("--overwrite", action="store_true", help="redo finished folds made with other settings or data")
    a, overrides = ap.parse_known_args(argv)
    if a.print_config:
        return print_configs(a.config, lambda c: resolve_config(c, ("", "wsi/"), lister="mgpath configs"))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise _unknown_method(m)
    run_benchmark(a.config, methods, parse_folds(a.folds), a.out, overrides, overwrite=a.overwrite)
    print(f"done; write the table with: mgpath report {a.out}")
    return 0
