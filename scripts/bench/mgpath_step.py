"""Benchmark: training step per slide of MGPATH and each baseline, and the OT head solvers; ONE JSON line.

- training step (forward + backward + optimiser step) on one slide with ``--tiles`` tiles at each of 2
  magnifications (the MIL baselines read one), paper sizes (1536-d features, 1024-d adaptors, ViT-B/32 text
  tower with 16 ctx x 4 sets, 64 visual prompts, graph ratio 0.2; baselines at their published sizes), time
  per step (median) and peak memory per method (CUDA: max allocated; CPU: peak RSS of a fresh process per
  method above its RSS before the first step);
- OT head: the same problems (``magnifications x classes`` per slide, 64 tokens, 4 prompt sets) solved by the
  default solver (``auto``: exp-domain when exact), the log-domain Sinkhorn, the official plain Sinkhorn
  (``plot``), POT's ``solve_batch`` and a loop over ``ot.sinkhorn``; the solvers are INTERLEAVED (each
  repetition times every solver once, in turn) and the median is reported, so drifting machine load hits all
  alike.

    python3 scripts/bench/mgpath_step.py [--device cuda] [--tiles 10000] [--steps 3] [--methods mgpath,abmil]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("mgpath", "abmil", "clam", "transmil", "dsmil", "meanpool", "coop")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _module(method: str, classes: list[str], device):
    from mgpath.baselines import (
        ABMILModule,
        CLAMModule,
        CoOpModule,
        DSMILModule,
        PoolingModule,
        TransMILModule,
    )
    from mgpath.module import MGPATHModule

    desc = {m: {c: f"tissue of class {c} seen at {m}" for c in classes} for m in ("5x", "10x")}
    text = {"text_model": "ViT-B-32", "quick_gelu": True}
    make = {"mgpath": lambda: MGPATHModule(desc, 1536, classes, **text),
            "coop": lambda: CoOpModule(desc, 1536, classes, **text),
            "abmil": lambda: ABMILModule(1536, classes), "clam": lambda: CLAMModule(1536, classes),
            "transmil": lambda: TransMILModule(1536, classes), "dsmil": lambda: DSMILModule(1536, classes),
            "meanpool": lambda: PoolingModule(1536, classes)}
    return make[method]().to(device)


def step_time(method: str, tiles: int, classes: int, steps: int, device) -> dict:
    """Median step time and peak memory of one method (run in a fresh process on CPU)."""
    from mgpath.graph import tile_adjacency
    from mgpath.model import Bag

    torch.manual_seed(0)
    names = [f"c{i}" for i in range(classes)]
    module = _module(method, names, device)
    side = int(np.ceil(np.sqrt(tiles)))
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:tiles] * 256
    nb = torch.from_numpy(tile_adjacency(xy, 256))
    slide = {m: Bag(torch.randn(tiles, 1536), nb).to(device) for m in ("5x", "10x")}
    batch = {"slides": [slide], "labels": torch.tensor([1], device=device)}
    opt = module.configure_optimizers()
    module.train()

    def step():
        loss, _ = module.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    out = {"method": method, "train_step_s": round(statistics.median(times), 4),
           "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["peak_rss_above_start_mb"] = round(out["peak_rss_mb"] - rss0, 1)
    return out


def ot_solvers(problems: int, device, reps: int) -> dict:
    """Interleaved timing of the OT solvers on ``problems`` problems of 64 tokens x 4 prompt sets."""
    import ot
    from ot.batch import solve_batch

    from mgpath.ot import sinkhorn_log, sinkhorn_plot

    torch.manual_seed(1)
    t = F.normalize(torch.randn(problems, 4, 1024, device=device), dim=-1)
    # visual tokens near the prompt sets (as after training), so the plans are not uniform at iteration 1
    near = t[torch.arange(problems)[:, None], torch.randint(0, 4, (problems, 64))]
    v = F.normalize(near * 20 + torch.randn(problems, 64, 1024, device=device), dim=-1)
    cost = 1 - torch.bmm(v, t.transpose(1, 2))
    a, b = torch.full((64,), 1 / 64, device=device), torch.full((4,), 0.25, device=device)
    solvers = {
        "torch_auto": lambda: sinkhorn_log(cost, eps=0.1, max_iter=100, tol=1e-2),
        "torch_log": lambda: sinkhorn_log(cost, eps=0.1, max_iter=100, tol=1e-2, solver="log"),
        "official_plot": lambda: sinkhorn_plot(cost, eps=0.1, max_iter=100, tol=1e-2),
        "pot_solve_batch": lambda: solve_batch(cost, reg=0.1, max_iter=100, tol=1e-2, method="log_sinkhorn",
                                               grad="detach"),
        "pot_loop": lambda: [ot.sinkhorn(a, b, cost[p], 0.1, numItermax=100, stopThr=1e-2) for p in range(problems)],
    }
    times = {k: [] for k in solvers}
    for f in solvers.values():
        f()
    for _ in range(reps):
        for k, f in solvers.items():  # interleaved: every repetition times each solver once
            _sync(device)
            t0 = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    res = {f"{k}_ms": round(statistics.median(v) * 1e3, 4) for k, v in times.items()}
    res["auto_over_official"] = round(res["torch_auto_ms"] / res["official_plot_ms"], 2)
    res["auto_over_log"] = round(res["torch_auto_ms"] / res["torch_log_ms"], 2)
    _, it = sinkhorn_log(cost, eps=0.1, max_iter=100, tol=1e-2)
    res["problems"], res["auto_iterations"] = problems, it
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ot-problems", type=int, default=64, help="problems for the larger OT comparison")
    ap.add_argument("--ot-reps", type=int, default=200)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one method, in a child process
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.one:
        print(json.dumps(step_time(a.one, a.tiles, a.classes, a.steps, device)))
        return
    steps = []
    for m in [x for x in a.methods.split(",") if x]:
        cmd = [sys.executable, __file__, "--one", m, "--device", a.device, "--tiles", str(a.tiles),
               "--classes", str(a.classes), "--steps", str(a.steps)]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=os.environ.copy())
        if r.returncode != 0:
            steps.append({"method": m, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            steps.append(json.loads(r.stdout.strip().splitlines()[-1]))
    ot_res = {"per_slide": ot_solvers(2 * a.classes, device, a.ot_reps),
              "many": ot_solvers(a.ot_problems, device, max(5, a.ot_reps // 10))}
    out = {"bench": "mgpath_step", "device": str(device),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "tiles_per_magnification": a.tiles, "magnifications": 2,
           "classes": a.classes, "train_steps": steps, "ot": ot_res}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
