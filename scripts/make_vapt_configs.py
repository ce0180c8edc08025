"""Write configs/vtab/<method>/<task>.yaml and configs/fgvc/<method>/<dataset>.yaml.

Shared defaults live in the signatures of `vapt.training.module.PromptTuningModule` (SGD, momentum 0.9, warmup 10 +
cosine per epoch, lr x batch / 256) and the DataModules (official transforms and splits); each file only
holds what differs per method and task. Edit this script and re-run it rather than editing the files:

    python scripts/make_vapt_configs.py            # rewrite all
    python scripts/make_vapt_configs.py --check    # exit 1 if a file differs (used by the tests)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vapt.data.fgvc import FGVC_DATASETS
from vapt.data.vtab import VTAB_TASKS

BACKBONE = "vit_base_patch16_224"
WEIGHTS = "weights/imagenet21k_ViT-B_16.npz"  # the paper's supervised ImageNet-21k ViT-B/16 (see data/vtab/README.md)

# VPT prompt lengths per task (adapter_plus conf/experiment/{vtab,fgvc}/vpt.yaml; reference section 1)
VPT_TOKENS = {
    "cifar100": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1, "svhn": 50,
    "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10, "diabetic_retinopathy": 1,
    "clevr_count": 100, "clevr_dist": 200, "dmlab": 100, "kitti": 100, "dsprites_loc": 100, "dsprites_ori": 100,
    "smallnorb_azi": 200, "smallnorb_ele": 200,
    "cub": 10, "nabirds": 50, "flowers": 5, "cars": 200, "dogs": 100,
}
# VAPT's released base lr / wd (reference section 2); the VTAB values other than cifar100 are placeholders
# in the official configs (0.01 / 0.001), so we start from the --fast sweep's anchor lr 5.0 instead.
VAPT_LR_WD = {"cifar100": (2.5, 0.01), "cub": (50.0, 1e-3), "nabirds": (50.0, 1e-4), "flowers": (50.0, 1e-3),
              "dogs": (25.0, 1e-3), "cars": (10.0, 1e-4)}
DEFAULT_LR_WD = (5.0, 1e-3)

METHODS = {
    # name: (model init_args, batch size)
    "vapt": ({"method": "vapt", "num_tokens": 10, "deep": True, "dropout": 0.1, "mlp_dropout": 0.1,
              "hidden_dim": 8, "kernel_size": 2}, 64),
    "vpt_deep": ({"method": "vpt", "num_tokens": None, "deep": True, "dropout": 0.1}, 128),
    "vpt_shallow": ({"method": "vpt", "num_tokens": None, "deep": False, "dropout": 0.0}, 128),
    "linear": ({"method": "linear"}, 128),
    # the other rows of the VAPT tables; options in method_kwargs (see docs/methods.md for each source)
    "adapter": ({"method": "adapter", "method_kwargs": {"reduction_factor": 8}}, 128),
    "lora": ({"method": "lora", "method_kwargs": {"rank": 8, "targets": "qkv"}}, 64),
    "vfpt": ({"method": "vfpt", "method_kwargs": {"num_tokens": None, "fourier_fraction": 0.5, "dropout": 0.1}},
             128),
    "e2vpt": ({"method": "e2vpt", "method_kwargs": {"num_tokens": 5, "num_kv_tokens": 5}}, 64),
    "gatevpt": ({"method": "gatevpt", "method_kwargs": {"num_tokens": 100, "gate_init": 5.0, "dropout": 0.1}}, 64),
    "replora": ({"method": "replora", "method_kwargs": {"rank": 8, "hidden_dim": 64, "targets": "qv"}}, 64),
    "gated_prompt": ({"method": "gated_prompt", "method_kwargs": {"num_tokens": 10, "prompt_type": "linear"}}, 64),
    # the VPT paper's MLP-3 row: KMnP/vpt MODEL.MLP_NUM = 2, trained with the linear probe's recipe
    "mlp": ({"method": "mlp", "method_kwargs": {"num_layers": 3, "dropout": 0.1}}, 128),
    # the VPT paper's Sidetune row: torchvision's ImageNet AlexNet beside the frozen ViT (download it yourself)
    "sidetune": ({"method": "sidetune", "method_kwargs": {"side_checkpoint": "weights/alexnet-owt-7be5be79.pth"}},
                 128),
}
# optimisation that differs from the VPT recipe (SGD, lr x batch / 256): NOAH's LoRA script (AdamW, lr 1e-3,
# wd 1e-4, no scaling), GatedPromptTuning's run.sh (lr 0.1 as given, wd 0); RepLoRA / gated prompts start from LoRA's
RECIPES = {
    "lora": {"optimizer": "adamw", "scale_lr": False, "lr": 0.001, "weight_decay": 0.0001},
    "replora": {"optimizer": "adamw", "scale_lr": False, "lr": 0.001, "weight_decay": 0.0001},
    "gated_prompt": {"optimizer": "adamw", "scale_lr": False, "lr": 0.001, "weight_decay": 0.0001},
    "gatevpt": {"scale_lr": False, "lr": 0.1, "weight_decay": 0.0},
}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    text = repr(v)
    if isinstance(v, float) and "e" in text:  # YAML 1.1 reads 1e-05 as a string: spell it out
        text = f"{v:.10f}".rstrip("0")
    return text


def _yaml_item(key: str, value) -> list[str]:
    """``    key: value`` lines of the model's init_args (a dict becomes an indented block)."""
    if isinstance(value, dict):
        return [f"    {key}:", *[f"      {k}: {_fmt(v)}" for k, v in value.items()]]
    return [f"    {key}: {_fmt(value)}"]


def render(family: str, method: str, name: str) -> str:
    margs, batch = METHODS[method]
    margs = {k: dict(v) if isinstance(v, dict) else v for k, v in margs.items()}
    for holder in (margs, margs.get("method_kwargs", {})):
        if "num_tokens" in holder and holder["num_tokens"] is None:
            holder["num_tokens"] = VPT_TOKENS[name]
    lr, wd = VAPT_LR_WD.get(name, DEFAULT_LR_WD) if method == "vapt" else DEFAULT_LR_WD
    lr_note = ("VAPT's released value" if method == "vapt" and name in VAPT_LR_WD
               else "starting point; the paper's values come from `vapt tune` (lr x wd grid)")
    recipe = dict(RECIPES.get(method, {}))
    if method in ("lora", "gatevpt"):
        lr_note = "the official script's value"
    lr, wd = recipe.pop("lr", lr), recipe.pop("weight_decay", wd)
    if family == "vtab":
        t = VTAB_TASKS[name]
        title = f"VTAB-1k {name} ({t.group}, {t.num_classes} classes)"
        data = ["  class_path: vapt.data.VTABDataModule", "  init_args:", "    root: data/vtab-1k",
                f"    task: {name}", f"    batch_size: {batch}"]
    else:
        d = FGVC_DATASETS[name]
        title = f"FGVC {d.official} ({d.num_classes} classes)"
        data = ["  class_path: vapt.data.FGVCDataModule", "  init_args:", f"    root: data/fgvc/{d.official}",
                f"    dataset: {name}", f"    batch_size: {batch}"]
    lines = [
        f"# {title}, {method}. Generated by scripts/make_vapt_configs.py: edit the script, not this file.",
        "# Defaults not listed (SGD momentum 0.9, warmup 10 + cosine per epoch, lr x batch/256, official",
        "# transforms and splits) come from PromptTuningModule and the DataModule.",
        f"#   vapt fit --config configs/{family}/{method}/{name}.yaml --data.root DIR",
        "seed_everything: 42",
        "trainer:",
        "  max_epochs: 100",
        f"  default_root_dir: runs/{family}",
        "model:",
        "  class_path: vapt.training.module.PromptTuningModule",
        "  init_args:",
        f"    backbone: {BACKBONE}",
        f"    checkpoint: {WEIGHTS}",
        *[line for k, v in margs.items() for line in _yaml_item(k, v)],
        *[f"    {k}: {_fmt(v)}" for k, v in recipe.items()],
        f"    lr: {_fmt(lr)}  # {'base lr' if recipe.get('scale_lr', True) else 'lr'}, {lr_note}",
        f"    weight_decay: {_fmt(wd)}",
        "data:",
        *data,
    ]
    return "\n".join(lines) + "\n"


def all_configs() -> dict[Path, str]:
    out = {}
    for family, names in (("vtab", VTAB_TASKS), ("fgvc", FGVC_DATASETS)):
        for method in METHODS:
            for name in names:
                out[ROOT / "configs" / family / method / f"{name}.yaml"] = render(family, method, name)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = ap.parse_args(argv)
    stale = []
    for path, text in all_configs().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python scripts/make_vapt_configs.py):", *stale, sep="\n  ")
        return 1
    print(f"{len(stale)} file(s) {'differ' if args.check else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
