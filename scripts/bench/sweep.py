"""Seconds per training epoch of the sweep machinery, measured interleaved. Prints ONE JSON line.

- ``linear``: a linear probe epoch running the frozen trunk every step (``uncached``) vs reading the cached
  trunk (``cached``; the one-time trunk pass over the split is reported as ``trunk_once_s``);
- ``stacked``: VPT-deep (or ``--method``), K = 1, 4, 8 configurations in one pass vs K separate epochs of one
  configuration each (the same loop with K = 1, so Lightning's own overhead is left out of both).

Every round runs each variant once, in turn; the medians over ``--rounds`` rounds are reported, with the ratios
``uncached / cached`` and ``K separate / K in one pass``. A small random-init ViT on random images by default
(the timing does not depend on the weights or pixels).

Usage:  python scripts/bench/sweep.py [--device cpu] [--rounds 5] [--images 128] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace


def build(args, method: str, seed: int):
    import torch

    from vapt.training.module import PromptTuningModule
    from vapt.training.stacked import Member, RngStream

    torch.manual_seed(seed)
    module = PromptTuningModule(
        num_classes=10, backbone="vit_tiny_patch16_224", checkpoint=None, img_size=args.img_size,
        backbone_kwargs={"patch_size": args.patch, "embed_dim": args.dim, "depth": args.depth,
                         "num_heads": args.heads},
        method=method, num_tokens=args.tokens, deep=True, dropout=0.1, mlp_dropout=0.0, conv_dropout=0.0,
        lr=1.0, warmup_epochs=0)
    device = torch.device(args.device)
    dm = SimpleNamespace(batch_size=args.batch, seed=seed, num_workers=0)
    member = Member(Path("."), {}, module.to(device), dm, max_epochs=1, device=device)
    member.rng = RngStream(device)
    return member


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img_size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--method", default="vpt", choices=("vpt", "vapt"))
    ap.add_argument("--ks", default="1,4,8")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from vapt.training.stacked import SplitData, train_pass

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=g).to(device)
    labels = torch.randint(0, 10, (args.images,), generator=g).to(device)
    ks = [int(k) for k in args.ks.split(",")]

    linear = build(args, "linear", 0)
    with torch.no_grad():
        linear.module.model.eval()
        t0 = time.perf_counter()
        feats = torch.cat([linear.module.model.forward_features(images[i:i + args.batch])
                           for i in range(0, args.images, args.batch)])
        trunk_once = time.perf_counter() - t0
    variants = {
        "linear_uncached": lambda: train_pass([linear], SplitData(images, labels, cached=False)),
        "linear_cached": lambda: train_pass([linear], SplitData(feats, labels, cached=True)),
    }
    single = build(args, args.method, 0)
    for k in ks:
        group = [build(args, args.method, s) for s in range(k)]
        for m in group[1:]:
            m.module.model.backbone = group[0].module.model.backbone
        variants[f"k{k}_one_pass"] = lambda group=group: train_pass(group, SplitData(images, labels, False))
        variants[f"k{k}_separate"] = lambda k=k: [train_pass([single], SplitData(images, labels, False))
                                                  for _ in range(k)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpu": "measured" if device.type == "cuda" else "not measured",
        "torch_threads": torch.get_num_threads(), "rounds": args.rounds, "images": args.images,
        "batch": args.batch, "vit": f"dim {args.dim}, depth {args.depth}, {args.img_size}px/patch {args.patch}",
        "method": args.method, "epoch_s": {k: round(v, 4) for k, v in med.items()},
        "trunk_once_s": round(trunk_once, 4),
        "linear_uncached_over_cached": round(med["linear_uncached"] / med["linear_cached"], 2),
        **{f"k{k}_separate_over_one_pass": round(med[f"k{k}_separate"] / med[f"k{k}_one_pass"], 2) for k in ks},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
