"""`vapt tune --estimate`: time a few steps on the configured device and predict the whole sweep's device-hours.

The sweep is the protocol `vapt tune` runs: the grid (40 runs, or 13 with ``--fast``) on the tuning split with
validation, then one final run per seed on the final split with a test evaluation. Step times are measured
with the in-memory loop of `vapt.training.stacked` (K configurations per step with ``--stack K``; K = 1
otherwise), so the prediction leaves out Lightning's own per-step overhead and data loading; separate runs
also validate after every epoch, which the prediction counts.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vapt.training.stacked import Member, build_member, configure_member, stacked_logits
from vapt.training.trunk_cache import frozen_prefix


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_steps(members: Sequence[Member], steps: int = 3) -> dict[str, float]:
    """Seconds of one training step, one evaluation step and (whole-trunk methods) one trunk forward, for the
    K configurations of ``members`` on a batch of the training split each."""
    first = members[0]
    device = first.device
    for m in members:
        m.module.model.backbone = first.module.model.backbone
        m.module.to(device)
        configure_member(m, 1)
    dm = first.datamodule
    dataset, bs = dm.datasets["train"], dm.batch_size
    n = min(bs, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)]).to(device)
    labels = torch.tensor([dataset.samples[i][1] for i in range(n)], device=device)
    batch = images.expand(len(members), *images.shape)
    model = first.module.model

    def train_step(features: torch.Tensor | None = None) -> None:
        for m in members:
            m.module.train()
            m.optimizer.zero_grad(set_to_none=True)
        logits = stacked_logits(members, features=features) if features is not None else stacked_logits(
            members, images=batch)
        sum(F.cross_entropy(lg, labels) for lg in logits).backward()
        for m in members:
            m.optimizer.step()

    def eval_step() -> None:
        with torch.no_grad():
            for m in members:
                m.module.eval()
            stacked_logits(members, images=batch)

    out = {"train_step_s": _timed(train_step, device, steps), "eval_step_s": _timed(eval_step, device, steps),
           "batch_size": bs, "configurations": len(members)}
    if frozen_prefix(model.prompt_config, len(model.backbone.blocks)).whole_trunk:
        with torch.no_grad():
            model.eval()
            feats = model.forward_features(images)
            out["trunk_step_s"] = _timed(lambda: model.forward_features(images), device, steps)
        cached = feats.expand(len(members), *feats.shape)
        out["head_step_s"] = _timed(lambda: train_step(cached), device, steps)
    return out


def predict_hours(timing: dict[str, float], sizes: dict[str, int], epochs: int, grid_runs: int, seeds: int,
                  stack: int, cached: bool) -> dict[str, float]:
    """Device-hours of the grid, the final runs and the test evaluation from measured step times.

    ``sizes``: images in ``tune`` (train800), ``val`` (val200), ``final`` (train800val200) and ``test``.
    ``stack=0``: separate runs (one configuration per step, validation after every epoch); ``stack=K``:
    ``ceil(runs / K)`` passes of K configurations (validation once, after the last epoch).
    """
    bs, k = timing["batch_size"], max(1, stack)
    steps = {name: math.ceil(n / bs) for name, n in sizes.items()}
    train = timing["head_step_s"] if cached else timing["train_step_s"]
    evaluate = timing["head_step_s"] / 2 if cached else timing["eval_step_s"]  # a head forward: under a step
    val_rounds = epochs + 1 if stack == 0 else 1
    grid_pass = epochs * steps["tune"] * train + val_rounds * steps["val"] * evaluate
    final_pass = epochs * steps["final"] * train
    test_pass = steps["test"] * evaluate
    grid_s = math.ceil(grid_runs / k) * grid_pass
    final_s = math.ceil(seeds / k) * final_pass
    test_s = math.ceil(seeds / k) * test_pass
    trunk_s = 0.0
    if cached:  # each image's trunk once: the tuning+final images and the test split
        trunk_s = (steps["final"] + steps["test"]) * timing["trunk_step_s"]
    total = grid_s + final_s + test_s + trunk_s
    return {"grid_h": grid_s / 3600, "final_h": final_s / 3600, "test_h": test_s / 3600, "trunk_h": trunk_s / 3600,
            "total_h": total / 3600}


def split_sizes(member: Member, protocol: dict) -> dict[str, int]:
    """Images in the tuning, validation, final and test splits of ``member``'s DataModule."""
    dm = member.datamodule

    def count(split: str | None) -> int:
        return len(dm._split_samples(split)) if split else 0

    return {"tune": len(dm.datasets["train"]), "val": count(protocol["tune"]["val_split"]),
            "final": count(protocol["final"]["train_split"]), "test": count(protocol["final"]["test_split"])}


def estimate_sweep(cli_args: Sequence[str], out: str | Path, grid_runs: int, seeds: int, stack: int,
                   trunk_cache: bool, protocol: dict, grid_overrides: dict[str, Any], steps: int = 3
                   ) -> dict[str, Any]:
    """Measure ``steps`` steps of the first grid configuration (K copies with ``stack=K``) and predict the sweep.

    Returns the measured step times, the split sizes and the predicted hours (see `predict_hours`).
    """
    k = max(1, stack)
    run_dir = Path(out) / "estimate"
    members = [build_member(cli_args, run_dir, grid_overrides) for _ in range(k)]
    timing = measure_steps(members, steps)
    first = members[0]
    model = first.module.model
    cached = bool(stack) and trunk_cache and frozen_prefix(model.prompt_config, len(model.backbone.blocks)).whole_trunk
    sizes = split_sizes(first, protocol)
    hours = predict_hours(timing, sizes, first.max_epochs, grid_runs, seeds, stack, cached)
    device = first.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "epochs": first.max_epochs, "grid_runs": grid_runs, "seeds": seeds, "stack": stack,
            "cached_trunk": cached, "sizes": sizes, **timing, **hours}
