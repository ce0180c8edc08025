"""Throughput and peak memory of each tile-encoder preset alone, at its input size; prints one JSON line.

    python scripts/bench/encoders.py                        # every buildable preset, full size, CPU fp32
    python scripts/bench/encoders.py --presets uni_v1 resnet50 --batch 16 --iters 5
    python scripts/bench/encoders.py --device cuda          # bf16 autocast on a GPU
    python scripts/bench/encoders.py --depth 2              # quick check: large models at 2 blocks

Random weights (no file is read): speed and memory do not depend on the values. Each preset runs in its own
process so that its peak resident memory (CPU) or peak allocated memory (GPU) is its own. Presets built from a
publisher folder only (``h0-mini``, ``lunit-vits8``, ``phikon``, ``phikon_v2``, ``plip``) are reported as
skipped unless ``--folder NAME=DIR`` gives one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

NEEDS_FOLDER = {"h0-mini", "lunit-vits8", "phikon", "phikon_v2", "plip"}


def run_one(name: str, batch: int, iters: int, device: str, depth: int | None, folder: str | None) -> dict:
    import torch

    from vapt.backbones import build_encoder, get_preset

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    kw = {}
    preset = get_preset(name)
    if depth is not None and preset.options.get("kwargs") is not None:
        kw["depth"] = depth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = build_encoder(name, checkpoint=folder, **kw).to(device)
    size = enc.data_config["input_size"][-1]
    tiles = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    x = enc.preprocess(tiles).to(device)
    cuda = device.startswith("cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        enc(x)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(iters):
            out = enc(x)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": name, "dim": int(out.shape[1]), "input": size, "batch": batch,
            "tiles_per_s": round(batch * iters / dt, 2), "peak_mem_mib": round(peak / 2**20, 1),
            "params_m": round(sum(p.numel() for p in enc.parameters()) / 1e6, 2),
            "depth": depth if "depth" in kw else "full", "precision": "bf16" if cuda else "fp32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=None, help="default: every available preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", type=int, default=None, help="reduce large models to this many blocks")
    ap.add_argument("--folder", action="append", default=[], help="NAME=DIR for presets built from a folder")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    folders = dict(f.split("=", 1) for f in a.folder)
    if a.one:
        print(json.dumps(run_one(a.one, a.batch, a.iters, a.device, a.depth, folders.get(a.one))))
        return
    from vapt.backbones import list_presets

    names = a.presets or [p.name for p in list_presets() if not p.unavailable]
    rows = []
    for name in names:
        if name in NEEDS_FOLDER and name not in folders:
            rows.append({"preset": name, "skipped": "built from the publisher's folder; pass --folder NAME=DIR"})
            continue
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(a.batch), "--iters", str(a.iters),
               "--device", a.device, *(["--depth", str(a.depth)] if a.depth else []),
               *[f"--folder={k}={v}" for k, v in folders.items()]]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        rows.append(json.loads(last) if r.returncode == 0 and last.startswith("{")
                    else {"preset": name, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
    print(json.dumps({"bench": "encoders", "device": a.device, "threads": os.environ.get("BENCH_THREADS", "all"),
                      "results": rows}))


if __name__ == "__main__":
    main()
