#!/usr/bin/env bash
# PyTorch workloads with gpu-arena's wait_for_reuse against the default
# allocator, alternating, in one session (logs to $OUT/torch_wait.log).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"; log="$out/torch_wait.log"
export PYTHONUNBUFFERED=1
lib=$(ls .gpu/lib/libgpu_arena*.so | head -1)
for r in 1 2; do
  for w in bert_infer gpt2_generate; do
    echo "== run $r $w default" >> "$log"
    env -u PYTORCH_CUDA_ALLOC_CONF python3 .gpu/extra/torch_workloads.py "$w" 2>&1 | grep -E "time_s=" >> "$log"
    echo "== run $r $w gpu-arena wait_for_reuse" >> "$log"
    GPU_ARENA_CONF=report:1,wait_for_reuse:1 python3 .gpu/extra/torch_workloads.py "$w" \
      --alloc "$lib:gpu_arena_torch_alloc:gpu_arena_torch_free" 2>&1 | grep -E "time_s=|peak committed" >> "$log"
  done
done
cat "$log"
