#!/usr/bin/env bash
# Runs the shared transformer workloads under PyTorch's allocator (default and
# expandable segments) and under gpu-arena's pluggable allocator, on the GPU
# machine, after `gpu-pack --cdylib --extra ../shared/bench/torch_workloads.py`.
#
#   bash scripts/torch_compare.sh [REPEATS]      (logs to $OUT/torch.log)
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
script=.gpu/extra/torch_workloads.py
lib=$(ls .gpu/lib/libgpu_arena*.so | head -1)
repeats=${1:-1}
log="$out/torch.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$log"
for r in $(seq "$repeats"); do
  for w in gpt2_generate bert_infer; do
    echo "== run $r $w default" | tee -a "$log"
    env -u PYTORCH_CUDA_ALLOC_CONF python3 "$script" "$w" 2>&1 | tee -a "$log"
    echo "== run $r $w expandable" | tee -a "$log"
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 "$script" "$w" 2>&1 | tee -a "$log"
    echo "== run $r $w gpu-arena" | tee -a "$log"
    GPU_ARENA_CONF=${GPU_ARENA_CONF:-report:1} python3 "$script" "$w" --alloc "$lib:gpu_arena_torch_alloc:gpu_arena_torch_free" 2>&1 | tee -a "$log"
  done
done
