"""Training-step throughput of PromptTuningModule (VPT-deep and VAPT on ViT-B/16, batch 32).

For each method: a Lightning fit over a generated VTAB-1k-layout folder (JPEG decode + official transform
+ DataLoader), timing every step from one ``on_train_batch_start`` to the next (data loading, forward,
backward, optimiser, metrics and logging); then the same model's bare forward + backward + SGD step on a
resident batch. ``outside_model_fraction = 1 - model_step / full_step`` (target < 0.10).
Prints ONE JSON line.

    python scripts/bench/train_throughput.py --device cpu --steps 3
    python scripts/bench/train_throughput.py --device cuda --steps 30 --num-workers 8
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from vapt.data import VTABDataModule
from vapt.data.synthetic import write_vtab_tree
from vapt.training.module import PromptTuningModule

METHODS = {
    "vpt_deep": {"method": "vpt", "deep": True, "num_tokens": 10, "dropout": 0.1},
    "vapt": {"method": "vapt", "deep": True, "num_tokens": 10, "dropout": 0.1, "mlp_dropout": 0.1, "kernel_size": 2, "hidden_dim": 8},
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time between consecutive train-batch starts (a whole step, data loading included)."""

    def __init__(self, device: str):
        self.device, self.starts = device, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _sync(self.device)
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module):
        _sync(self.device)
        self.starts.append(time.perf_counter())


def bench_method(name: str, args, data_root: Path) -> dict:
    device = args.device
    module = PromptTuningModule(num_classes=100, backbone=args.backbone, img_size=args.img_size, lr=0.1,
                                warmup_epochs=0, **METHODS[name])
    dm = VTABDataModule(root=str(data_root), task="cifar100", train_split="train800", val_split=None,
                        test_split=None, batch_size=args.batch, num_workers=args.num_workers,
                        img_size=args.img_size)
    timer = StepTimer(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                         limit_train_batches=args.warmup + args.steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, precision=args.precision,
                         callbacks=[timer], log_every_n_steps=1, default_root_dir=tempfile.mkdtemp())
    trainer.fit(module, dm)
    steps = [b - a for a, b in zip(timer.starts[:-1], timer.starts[1:])][args.warmup:]
    full = statistics.median(steps)
    peak_fit = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None

    # bare model step on a resident batch: forward + backward + SGD step, nothing else
    model = module.model.to(device)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)
    dtype = torch.bfloat16 if "bf16" in args.precision else None
    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    bare = statistics.median(times)
    out = {
        "images_per_s": round(args.batch / full, 2),
        "step_s": round(full, 4),
        "model_step_s": round(bare, 4),
        "outside_model_fraction": round(max(0.0, 1 - bare / full), 4),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if device == "cuda":
        out["peak_mem_mb"] = round(max(peak_fit, torch.cuda.max_memory_allocated() / 2**20), 1)
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    del trainer, module, model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--precision", default="32-true", help="Lightning precision, e.g. 32-true, bf16-mixed")
    ap.add_argument("--methods", default="vpt_deep,vapt")
    ap.add_argument("--source-pixels", type=int, default=224, help="side of the generated JPEGs")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        n = args.batch * (args.warmup + args.steps)
        root = write_vtab_tree(Path(tmp), ["cifar100"], sizes={"train800": n, "val200": 1, "test": 1},
                               img_size=args.source_pixels)
        results = {m: bench_method(m, args, root) for m in args.methods.split(",")}
    print(json.dumps({
        "bench": "train_throughput", "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}",
        "torch_threads": torch.get_num_threads(), "backbone": args.backbone, "img_size": args.img_size,
        "batch": args.batch, "steps": args.steps, "num_workers": args.num_workers, "precision": args.precision,
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
