#!/usr/bin/env bash
# One GPU session after `gpu-pack --cdylib --extra ../shared/bench/torch_workloads.py`:
# every packed test binary, the bench on CUDA, sleep/wake under PyTorch and the
# PyTorch workload comparison. Logs (at most 5 files) go to $OUT.
#   bash scripts/gpu_session.sh [tests] [bench] [sleep] [torch]   (default: all)
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
parts=${*:-tests bench sleep torch}
lib=$(ls .gpu/lib/libgpu_arena*.so | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/session.log"
for p in $parts; do
  case $p in
    tests)
      for t in .gpu/tests/*; do
        echo "=== test $(basename "$t")" | tee -a "$out/session.log"
        timeout 300 "$t" --test-threads=1 --nocapture > "$out/tests.log.part" 2>&1; rc=$?
        cat "$out/tests.log.part" >> "$out/tests.log"; rm -f "$out/tests.log.part"
        echo "rc=$rc $(grep -E '^test result|passed, .* failed|scenarios' "$out/tests.log" | tail -1)" | tee -a "$out/session.log"
      done ;;
    bench)
      echo "=== bench" | tee -a "$out/session.log"
      timeout 300 .gpu/bin/gpu-arena bench > "$out/bench.txt" 2>> "$out/session.log"; echo "bench rc=$?" | tee -a "$out/session.log" ;;
    sleep)
      echo "=== torch sleep/wake" | tee -a "$out/session.log"
      # Needs the gpu_arena package (scripts/python_h100.sh installs the wheel).
      timeout 200 python3 scripts/torch_sleep_wake.py 2>&1 | grep -v Warning | tail -5 | tee -a "$out/session.log" ;;
    torch)
      echo "=== torch workloads" | tee -a "$out/session.log"
      timeout 400 bash scripts/torch_compare.sh "${TORCH_REPEATS:-1}" > /dev/null 2>&1; echo "torch rc=$?" | tee -a "$out/session.log"
      grep -E "time_s=|peak committed" "$out/torch.log" | tee -a "$out/session.log" ;;
    tune)
      # The memory / time trade-off of the keep-alive, on both workloads.
      echo "=== keep-alive trade-off" | tee -a "$out/session.log"
      for f in 0.25 1.0; do
        for w in bert_infer gpt2_generate; do
          GPU_ARENA_CONF="report:1,keep_alive_fraction:$f" timeout 120 python3 .gpu/extra/torch_workloads.py "$w" \
            --alloc "$lib:gpu_arena_torch_alloc:gpu_arena_torch_free" 2>&1 | grep -E "time_s=|peak committed" \
            | sed "s/^/keep_alive_fraction=$f: /" | tee -a "$out/session.log"
        done
      done ;;
  esac
done
