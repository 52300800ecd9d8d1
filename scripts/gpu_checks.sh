#!/usr/bin/env bash
# One GPU-machine call that checks a build end to end: every packed test
# binary (the HIP backend's tests through the CUDA-mode stand-in libamdhip64
# too), the bench on CUDA (Markdown, for docs/bench/) and on HIP (quick), and
# one short process of each PyTorch workload on gpu-arena.
#
# Here, first:
#   tests/support/hip-shim/build.sh release
#   HIP_PATH=/usr ../shared/tools/gpu-pack --features cuda,hip --cdylib \
#       --extra ../shared/bench/torch_workloads.py --extra target/hip-shim/libamdhip64-release
# Then the device tool: `bash scripts/gpu_checks.sh`, carry [".gpu"], timeout_s 600.
# Logs (7 files) go to $OUT. GPU_CHECKS_TORCH=0: no PyTorch runs.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
lib=.gpu/extra/libamdhip64-release
export LD_LIBRARY_PATH="$PWD/$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GPU_ARENA_HIP_SHIM=cuda GPU_ARENA_REQUIRE_HIP=1
summary=$out/summary.txt
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  git log -1 --format='build %h %s' 2>/dev/null; } > "$summary"
step() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name: $*" >> "$out/$name"
  timeout "$limit" "$@" >> "$out/$name" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s: $*" | tee -a "$summary"
}
step tests.log 230 .gpu/tests/all --test-threads=1 --nocapture
for t in .gpu/tests/*; do
  case $(basename "$t") in all) continue ;; esac
  step tests-other.log 60 "$t" --test-threads=1 --nocapture
done
step bench.md 150 .gpu/bin/gpu-arena --backend cuda bench --markdown
step bench-hip.txt 50 .gpu/bin/gpu-arena --backend hip bench --quick
so=$(ls .gpu/lib/libgpu_arena*.so | head -1)
# GPU_CHECKS_TORCH=0 leaves the PyTorch runs out (scripts/torch_alternate.sh does them at length).
[ "${GPU_CHECKS_TORCH:-1}" = 0 ] || for w in bert_infer gpt2_generate train serve; do
  step torch-quick.log 70 env GPU_ARENA_CONF=report:1 python3 scripts/torch_bench.py "$w" --repeat 2 --alloc "$so"
done
grep -E "^test result|FAILED|panicked" "$out/tests.log" "$out/tests-other.log" | tail -25 >> "$summary"
grep -E "^REP|allocator time|peak committed" "$out/torch-quick.log" >> "$summary"
