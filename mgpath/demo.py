"""End-to-end MGPATH demo on generated slides (CPU, a few minutes).

``mgpath demo --out demo_run`` does, all from Python:

1. writes ``--slides-per-class`` pyramidal TIFF slides of two visibly different tissue classes
   (``mgpath.slides.synthetic``: class_a = fine blue texture, class_b = coarse pink-purple texture), scanned
   at 10x (1 um/px), so that 256 px tiles at 10x and 5x (the README's tiling settings) find tissue on them;
2. tiles them at 10x and 5x, 256 px (``mgpath.pipelines.tile``);
3. extracts tile features with a small randomly initialised ViT (``vapt.backbones.build_encoder``);
4. writes ``labels.csv`` and K-shot patient-grouped splits (``mgpath.splits``);
5. fits MGPATH (tiny random text tower, ``configs/wsi/demo_tiny.yaml``), keeps the best validation macro-F1
   checkpoint and tests it (AUC, macro-F1, accuracy);
6. draws the heatmap of one test slide (``mgpath.heatmap``);
7. prints a small method table: MGPATH vs ABMIL (same split, features, trainer) vs zero-shot.

``--augment`` adds training bags from features of randomly rotated/flipped tiles, as in the paper.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from mgpath.benchmark import METHODS, TOWER_ZEROSHOT, method_config
from vapt.reporting.tables import markdown_table

__all__ = ["run_demo", "write_demo_slides"]

CLASSES = {"class_a": "blue_fine", "class_b": "he_coarse"}
_log = logging.getLogger(__name__)


#: the demo's comparison: every method of `mgpath benchmark` besides MGPATH itself and the zero-shot rows that
#: need a publisher's weights (CONCH, QuiltNet, PLIP), which the offline demo does not have (MSCPT runs a tiny
#: random HF CLIP written by the demo, on features of that CLIP's image tower)
DEMO_BASELINES = tuple(m for m in METHODS if m != "mgpath" and m not in TOWER_ZEROSHOT)


def run_demo(out: str | Path, slides_per_class: int = 10, shots: int = 4, epochs: int = 10,
             size: tuple[int, int] = (3072, 2304), tile_size: int = 256, encoder: str = "vit_tiny_patch16_224",
             img_size: int = 64, seed: int = 0, augment: bool = False, mpp: float = 1.0, log=_log.info,
             baselines: tuple[str, ...] = DEMO_BASELINES) -> dict:
    """Run the whole pipeline in ``out``; returns the test metrics and output paths.

    ``augment`` also extracts features of randomly rotated/flipped tiles and adds them as extra training bags
    (the paper's doubled training set). ``baselines``: the other methods compared on the same split (default
    every method of ``mgpath benchmark``).
    """
    from mgpath.heatmap import slide_heatmap
    from mgpath.lightning_cli import make_cli
    from mgpath.pipelines.extract import extract_features
    from mgpath.pipelines.jobs import find_jobs
    from mgpath.pipelines.tile import tile_slides
    from mgpath.slides.grid import TileParams
    from mgpath.splits import make_kshot_splits, write_split_csv
    from vapt.backbones import build_backbone
    from vapt.fileio.resources import data_file, resolve_config

    out = Path(out)
    t0 = time.perf_counter()
    slides, rows = write_demo_slides(out / "slides", slides_per_class, size, mpp, seed)
    log(f"[1/6] {len(slides)} slides in {out / 'slides'} ({time.perf_counter() - t0:.0f}s)")
    tile_slides(slides, out / "tiles", [TileParams(tile_size, magnification=10.0), TileParams(tile_size, 5.0)],
                workers=1, progress=False)
    log(f"[2/6] tiled at 10x and 5x into {out / 'tiles'} ({time.perf_counter() - t0:.0f}s)")
    torch.manual_seed(seed)
    enc = build_backbone(encoder, img_size=img_size)
    jobs, problems = find_jobs(out / "tiles", out / "features")
    if problems:
        raise RuntimeError(f"mgpath/demo.py: feature extraction problems: {problems[:3]}")
    extract_features(jobs, enc, encoder, batch_size=64, workers=0, accelerator="cpu", progress=False)
    log(f"[3/6] features ({enc.embed_dim if hasattr(enc, 'embed_dim') else ''}-d, random {encoder}) in "
        f"{out / 'features'} ({time.perf_counter() - t0:.0f}s)")
    extra = []
    if augment:
        from mgpath.pipelines.augment import extract_augmented_features

        extract_augmented_features(out / "tiles", out / "features_aug", enc, encoder, seed=seed, batch_size=64,
                                   workers=0, accelerator="cpu", progress=False)
        extra = ["--data.augmented_dirs", json.dumps({m: str(out / "features_aug" / m) for m in ("5x", "10x")})]
        log(f"      + features of rotated/flipped tiles in {out / 'features_aug'} ({time.perf_counter() - t0:.0f}s)")
    labels = pd.DataFrame(rows)
    labels.to_csv(out / "labels.csv", index=False)
    split = make_kshot_splits(labels, k=shots, n_folds=1, val_frac=0.3, seed=seed)[0]
    write_split_csv(split, out / "splits" / "splits_0.csv")
    log(f"[4/6] {shots}-shot split: {len(split['train'])} train / {len(split['val'])} val / "
        f"{len(split['test'])} test slides")
    import h5py

    with h5py.File(next((out / "features" / "10x").glob("*.h5")), "r") as f:
        dim = int(f["features"].shape[1])
    base = ["--config", str(resolve_config("wsi/demo_tiny")),
            "--data.labels_csv", str(out / "labels.csv"),
            "--data.split_csv", str(out / "splits" / "splits_{fold}.csv"),
            "--data.features_root", str(out / "features"),
            "--model.descriptions", str(data_file("prompts/demo.json")),
            "--model.feature_dim", str(dim), "--trainer.max_epochs", str(epochs), "--seed_everything", str(seed),
            "--trainer.enable_model_summary", "false", *extra]
    cli = make_cli([*base, "--trainer.default_root_dir", str(out / "run")], run=False)
    trainer, module, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(module, datamodule=dm)
    best = trainer.checkpoint_callback.best_model_path or None
    log(f"[5/6] fitted {epochs} epochs; best val macro-F1 checkpoint: {best} ({time.perf_counter() - t0:.0f}s)")
    res = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)[0]
    metrics = {k.split("/")[1]: round(float(v), 4) for k, v in res.items() if k.startswith("test/")}
    log("      test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    sid = split["test"][0]
    files = {m: str(out / "features" / m / f"{sid}.h5") for m in module.model.magnifications}
    png, _ = slide_heatmap(module.model.cpu(), str(out / "slides" / f"{sid}.tiff"), files,
                           str(out / "heatmaps" / f"{sid}.png"))
    log(f"[6/6] heatmap {png} ({time.perf_counter() - t0:.0f}s total)")
    methods = {"mgpath": metrics, **_baselines(base, out, log, baselines)}
    log(method_table(methods))
    result = {"test": metrics, "methods": methods, "augmented": augment, "n_train_bags": len(dm.datasets["train"]), "checkpoint": best, "heatmap": str(png), "seconds": round(time.perf_counter() - t0, 1),
              "n_train": len(split["train"]), "n_val": len(split["val"]), "n_test": len(split["test"])}
    (out / "demo_result.json").write_text(json.dumps(result, indent=2))
    return result


def write_demo_slides(folder: str | Path, slides_per_class: int = 10, size: tuple[int, int] = (3072, 2304),
                      mpp: float = 1.0, seed: int = 0) -> tuple[list[str], list[dict]]:
    """The demo's slides (kept when already there): paths, and label rows ``slide_id, case_id, label``."""
    from mgpath.slides.synthetic import make_synthetic_slide

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slides, rows = [], []
    for c, (name, texture) in enumerate(CLASSES.items()):
        for i in range(slides_per_class):
            sid = f"{name}_{i:02d}"
            path = folder / f"{sid}.tiff"
            if not path.is_file():
                make_synthetic_slide(path, size=size, mpp=mpp, levels=3, tissue_class=texture,
                                     seed=seed * 1000 + c * 100 + i)
            slides.append(str(path))
            rows.append({"slide_id": sid, "case_id": f"patient_{name}_{i // 2}", "label": name})
    return slides, rows


def _baselines(base: list[str], out: Path, log, names: tuple[str, ...] = DEMO_BASELINES) -> dict:
    """Every other `mgpath benchmark` method (trained ones: fit + test with their default recipe; zero-shot:
    test only) on the demo's split and features, with the model blocks `mgpath benchmark` uses."""
    import yaml

    from mgpath.lightning_cli import make_cli

    cfg = yaml.safe_load(Path(base[1]).read_text())
    rest = []
    for flag, value in zip(base[2::2], base[3::2]):
        if flag.startswith("--model."):
            cfg["model"][flag.removeprefix("--model.")] = yaml.safe_load(value)
        else:
            rest += [flag, value]
    # the demo's features are not the tiny text tower's size: ViLa-MIL and TOP learn a linear map to it; TOP
    # gets prompts written for the demo's two textures
    top = out / "top_prompts.json"
    top.write_text(json.dumps({"bag": {c: f"tissue with a {t.replace('_', ' ')} texture. * * * *"
                                       for c, t in CLASSES.items()},
                               "instance": ["an image of fine blue texture. * * * *",
                                            "an image of coarse pink texture. * * * *"]}))
    cfg["methods"] = {"vilamil": {"feature_adaptor": True, "n_ctx": 4, "n_prototypes": 4, "hidden": 16},
                      # TOP's SGD lr 0.02 drives the demo's trainable adaptor into saturated (logit scale 100)
                      # logits on these random features: one class for every slide; 0.002 learns the split
                      "top": {"prompts": str(top), "feature_adaptor": True, "lr": 0.002}}
    data = {}
    names = runnable_methods(names, log)
    if "mscpt" in names:
        cfg["methods"]["mscpt"], data["mscpt"] = _mscpt_inputs(out)
    res = {}
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        method, train = method_config(cfg, name)
        path = out / f"run_{name}.yaml"
        path.write_text(yaml.safe_dump(method, sort_keys=False))
        flags = [v for f, x in zip(rest[::2], rest[1::2]) for v in (f, data.get(name, {}).get(f, x))]
        cli = make_cli(["--config", str(path), *flags, "--trainer.default_root_dir", str(out / f"run_{name}")],
                       run=False)
        trainer, module, dm = cli.trainer, cli.model, cli.datamodule
        best = None
        if train:
            trainer.fit(module, datamodule=dm)
            best = trainer.checkpoint_callback.best_model_path or None
        r = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)[0]
        res[name] = {k.split("/")[1]: round(float(v), 4) for k, v in r.items() if k.startswith("test/")}
        log(f"      method {i}/{len(names)} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in res[name].items())
            + f" ({time.perf_counter() - t0:.0f}s)")
    return res


def runnable_methods(names: tuple[str, ...], log) -> tuple[str, ...]:
    """``names`` without those whose optional packages are missing (MSCPT needs ``transformers``), each said
    via ``log``."""
    if "mscpt" in names and importlib.util.find_spec("transformers") is None:
        log('      MSCPT left out: it runs a Hugging Face CLIP model; pip install "vapt-mgpath[hf]" to include it')
        return tuple(n for n in names if n != "mscpt")
    return tuple(names)


def _mscpt_inputs(out: Path) -> tuple[dict, dict]:
    """MSCPT's settings and data flags on the demo: a tiny random HF CLIP (``out/clip_tiny``), the demo tiles'
    features before its projection (``out/features_clip``, ``plip_pooled``), tile-selection prompts naming the
    two textures and the demo's descriptions (one per class and magnification)."""
    from mgpath.demo_clip import write_demo_clip
    from mgpath.pipelines.extract import extract_features, weights_description
    from mgpath.pipelines.jobs import find_jobs
    from vapt.backbones import build_encoder
    from vapt.backbones.files import resolve
    from vapt.fileio.resources import data_file

    folder = write_demo_clip(out / "clip_tiny")
    jobs, problems = find_jobs(out / "tiles", out / "features_clip")
    if problems:
        raise RuntimeError(f"mgpath/demo.py: feature extraction problems: {problems[:3]}")
    enc = build_encoder("plip_pooled", checkpoint=str(folder))  # as `mgpath extract --encoder plip_pooled`
    extract_features(jobs, enc, "plip_pooled", checkpoint=str(folder), batch_size=64, workers=0,
                     accelerator="cpu", progress=False, weights=weights_description(str(resolve(folder).file)))
    prompts = out / "mscpt_select.json"
    prompts.write_text(json.dumps({"classnames": {c: t.replace("_", " ") + " texture" for c, t in CLASSES.items()},
                                   "templates": ["tissue with a CLASSNAME.", "an image of CLASSNAME."]}))
    settings = {"descriptions": str(data_file("prompts/demo.json")), "clip_checkpoint": str(folder),
                "select_prompts": str(prompts), "feature_dim": int(enc.feature_dim), "n_tiles": 8}
    # the augmented bags (if any) are the demo encoder's features, not this CLIP's: MSCPT trains without them
    return settings, {"--data.features_root": str(out / "features_clip"), "--data.augmented_dirs": "null"}


def method_table(methods: dict[str, dict]) -> str:
    """Markdown table: one row per method, test AUC / macro-F1 / accuracy."""
    lines = markdown_table(["method", "test auc", "test f1", "test acc"],
                           ([m, f"{r['auc']:.4f}", f"{r['f1']:.4f}", f"{r['acc']:.4f}"] for m, r in methods.items()))
    note = ("zero-shot here runs the demo's random tiny text tower and random adaptors, so its numbers say nothing "
            "about zero-shot with an aligned tower (a PLIP-G import), which is the paper's zero-shot baseline; MSCPT runs a "
            "tiny random CLIP (its tiles and features from that CLIP's image tower); "
            f"{', '.join(TOWER_ZEROSHOT)} need the publishers' weights and are not run here")
    return "\n".join(["      methods on the demo split:", *("      " + x for x in lines), "      " + note])
