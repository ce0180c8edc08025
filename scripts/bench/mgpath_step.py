"""Benchmark: MGPATH training step per slide and the OT head; prints ONE JSON line.

- training step (forward + backward + Adam) on one slide with ``--tiles`` tiles at each of 2 magnifications,
  paper sizes (1536-d features, 1024-d adaptors, ViT-B/32 text tower with 16 ctx x 4 sets, 64 visual prompts,
  graph ratio 0.2), time per step and peak memory (CUDA: max allocated; CPU: peak RSS of the process);
- OT head: the same (problems, 64 tokens, 4 prompt sets) solved by the batched torch log-domain Sinkhorn,
  POT's batched solver and a per-class Python loop over ``ot.sinkhorn`` calls.

    python3 scripts/bench/mgpath_step.py [--device cuda] [--tiles 10000] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device, repeat):
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ot-problems", type=int, default=64, help="problems for the larger OT comparison")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    from mgpath.graph import tile_adjacency
    from mgpath.model import Bag, build_mgpath

    classes = [f"c{i}" for i in range(a.classes)]
    desc = {m: {c: f"tissue of class {c} seen at {m}" for c in classes} for m in ("5x", "10x")}
    model = build_mgpath(desc, classes, 1536, 1024, ("5x", "10x"), "ViT-B-32", quick_gelu=True).to(device)
    side = int(np.ceil(np.sqrt(a.tiles)))
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[: a.tiles] * 256
    nb = torch.from_numpy(tile_adjacency(xy, 256))
    slide = {m: Bag(torch.randn(a.tiles, 1536), nb).to(device) for m in ("5x", "10x")}
    label = torch.tensor([1], device=device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=9e-4, weight_decay=1e-5)

    def step():
        loss = F.cross_entropy(model([slide]), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_s = _timeit(step, device, a.steps)
    mem = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "rss_before_steps_mb": round(rss0, 1)}
    if device.type == "cuda":
        mem["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    model.eval()
    with torch.no_grad():
        infer_s = _timeit(lambda: model([slide]), device, a.steps)
        text_s = _timeit(lambda: model.text(), device, a.steps)

    # OT head: per slide there are (magnifications x classes) problems of 64 tokens x 4 prompt sets
    import ot
    from ot.batch import solve_batch

    from mgpath.ot import sinkhorn_log

    res_ot = {}
    for name, P in (("per_slide", 2 * a.classes), ("many", a.ot_problems)):
        v = F.normalize(torch.randn(P, 64, 1024, device=device), dim=-1)
        t = F.normalize(torch.randn(P, 4, 1024, device=device), dim=-1)
        cost = 1 - torch.bmm(v, t.transpose(1, 2))
        u64, u4 = torch.full((64,), 1 / 64, device=device), torch.full((4,), 0.25, device=device)
        reps = 20 if name == "per_slide" else 5
        torch_s = _timeit(lambda c=cost: sinkhorn_log(c, eps=0.1, max_iter=100, tol=1e-2), device, reps)
        batch_s = _timeit(lambda c=cost: solve_batch(c, reg=0.1, max_iter=100, tol=1e-2, method="log_sinkhorn",
                                                     grad="detach"), device, reps)
        loop_s = _timeit(lambda c=cost, a=u64, b=u4: [ot.sinkhorn(a, b, c[p], 0.1, numItermax=100, stopThr=1e-2)
                                                      for p in range(len(c))], device, reps)
        res_ot[name] = {"problems": P, "torch_batched_ms": round(torch_s * 1e3, 3),
                        "pot_solve_batch_ms": round(batch_s * 1e3, 3), "pot_loop_ms": round(loop_s * 1e3, 3),
                        "loop_over_batched": round(loop_s / torch_s, 1)}
    out = {"bench": "mgpath_step", "device": str(device),
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "tiles_per_magnification": a.tiles, "magnifications": 2,
           "classes": a.classes, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "train_step_s": round(step_s, 4), "inference_s": round(infer_s, 4), "text_side_s": round(text_s, 4),
           **mem, "ot": res_ot}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
