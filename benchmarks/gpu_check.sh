#!/usr/bin/env bash
# The one prepared device check for a session that is lent an H100/H200 (6.5 minutes on an H200, plus the machine's start):
#   1. the CUDA tests (CUDA graphs + FP8 GEMM paths of the built-in engine, FP8 export on GPU),
#   2. the issue-6 target: built-in engine (CUDA graphs) vs HF generate with a static cache
#      (which transformers compiles on CUDA) at batch 32 on a SmolLM2-135M-shaped model,
#   3. where an FP8 linear's time goes (BF16 vs FP8 with fused / eager input quantization),
#   4. a cut of the blog's matrix (8B vs Minitron-4B width/depth, BF16 and FP8, 2 ISL/OSL pairs).
# Logs and the two result files go to $OUT (the device tool's output folder) or ./gpu-out. Random weights throughout:
# the device machine has no network, so no GGUF package; speed does not depend on the values.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python - <<'PY' 2>&1 | tee "$OUT/env.txt"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for m in ("transformers", "safetensors", "pydantic", "yaml", "rich", "modelopt", "pytest"):
    print(m, "ok" if importlib.util.find_spec(m) else "MISSING")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/nvidia-smi.csv" 2>/dev/null
timeout 150 python -m pytest -q -rs tests/gpu tests/unit/test_engine_torch.py 2>&1 | tee "$OUT/tests.log"
timeout 120 python benchmarks/fp8_linear_speed.py 2>&1 | tee "$OUT/fp8_linear_speed.log"
timeout 180 python benchmarks/engine_speed.py --device cuda --random-weights --skip ort,prune \
    --isl 128 --osl 128 2>&1 | tee "$OUT/engine_speed.log"
timeout 240 python benchmarks/gpu_matrix.py --pairs 128/128,2048/128 \
    2>&1 | tee "$OUT/gpu_matrix.log"
# The result files: each script's last stdout line is its JSON (commit them as
# benchmarks/results/gpu_check.json with `benchmarks/gpu_check_record.py $OUT --commit SHA`).
for name in engine_speed gpu_matrix fp8_linear_speed; do
    grep '^{' "$OUT/$name.log" | tail -n 1 >"$OUT/$name.json" || echo "no JSON from $name"
done
