"""Forward + backward cost of prompts on a frozen ViT-B/16 (224 px), at equal batch. Prints ONE JSON line.

Configurations, each timed in its own subprocess so peak memory is per configuration:
  (a) ``backbone_n_tokens``: the frozen backbone carrying N extra (input) tokens, gradients to those tokens
      (VPT-shallow: the cheapest model with the same sequence length and a full-depth backward);
  (b) ``vpt_deep``: VPT-deep with N tokens per layer;
  (c) ``vapt``: VAPT with N tokens, K=2, r=8.
Reported: ms per image for one forward + backward, peak memory (CUDA allocator peak on GPU, process peak RSS on
CPU), ATen operators per step (kernel launches, the cost when a GPU step is launch-bound), and the ratios
(b)/(a), (c)/(a). Target: (c)/(a) <= 1.10.

Usage:  python scripts/bench/prompt_overhead.py [--device cuda] [--batch 32] [--steps 10] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    "backbone_n_tokens": dict(method="vpt", deep=False),
    "vpt_deep": dict(method="vpt", deep=True),
    "vapt": dict(method="vapt", deep=True, kernel_size=2, hidden_dim=8),
}


def run_one(name: str, args) -> dict:
    import torch

    from vapt import PromptConfig, build_model

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = PromptConfig(num_tokens=args.num_tokens, dropout=0.0, mlp_dropout=0.0, conv_dropout=0.0,
                       **CONFIGS[name])
    model = build_model(args.model, num_classes=100, prompt=cfg, img_size=args.img_size).to(device)
    model.train()
    step_model = torch.compile(model) if args.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)
    use_bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        grads = torch.autograd.grad(loss, params)
        return grads

    for _ in range(args.warmup):
        step()
    ops_per_step = count_ops(step) if not args.compile else None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms_per_image": 1000 * elapsed / (args.steps * args.batch), "peak_mb": peak_mb,
            "trainable_params": sum(p.numel() for p in params), "aten_ops_per_step": ops_per_step}


def count_ops(step) -> int:
    """ATen operators dispatched by one forward + backward: each is about one kernel launch on a GPU, so
    this is the cost that dominates when a step is launch-bound (small batch, fast GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        step()
    return Counter.calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-tokens", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--only", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print(json.dumps(run_one(args.only, args)))
        return
    result = {"bench": "prompt_overhead", "model": args.model, "img_size": args.img_size, "device": args.device,
              "batch": args.batch, "steps": args.steps, "num_tokens": args.num_tokens, "compile": args.compile,
              "dtype": "bf16-autocast" if args.device.startswith("cuda") else "fp32"}
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--only", name, *sys.argv[1:]], capture_output=True,
                             text=True, check=True, env=os.environ)
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = result["backbone_n_tokens"]["ms_per_image"]
    result["ratio_vpt_deep_over_a"] = result["vpt_deep"]["ms_per_image"] / base
    result["ratio_vapt_over_a"] = result["vapt"]["ms_per_image"] / base
    result["target_vapt_over_a_le_1.10"] = result["ratio_vapt_over_a"] <= 1.10
    print(json.dumps(result))


if __name__ == "__main__":
    main()
