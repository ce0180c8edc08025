#!/usr/bin/env bash
# One short GPU session: prompt overhead (bf16), torch.compile (inductor) equality for VAPT, and training
# throughput (extraction throughput: scripts/bench/tiling.py --device cuda). Usage: bash scripts/bench/gpu_checks.sh OUT_DIR   (wheels for missing packages in .whl/, optional)
set -uo pipefail
OUT=${1:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpu.txt"
timeout 120 python3 scripts/bench/prompt_overhead.py --device cuda --batch 32 --steps 10 --warmup 3 | tee "$OUT/prompt_overhead.json"
timeout 100 python3 - <<'PY' | tee "$OUT/compile.json"
import json, time, torch
from vapt import PromptConfig, build_model
torch.manual_seed(0)
m = build_model("vit_base_patch16_224", 100, PromptConfig(method="vapt", num_tokens=10)).cuda().eval()
with torch.no_grad():
    for p in m.prompts.parameters(): p.normal_(0, 0.05)
x = torch.randn(8, 3, 224, 224, device="cuda")
t = time.time(); c = torch.compile(m)
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    ref = m(x).float(); out = c(x).float()
print(json.dumps({"compile_inductor_max_abs_diff_bf16": float((out - ref).abs().max()),
                  "compile_s": time.time() - t, "logit_scale": float(ref.abs().max())}))
PY
timeout 150 python3 scripts/bench/train_throughput.py --device cuda --precision bf16-mixed --batch 32 --steps 20 --warmup 5 --num-workers 8 | tee "$OUT/train_throughput.json"
