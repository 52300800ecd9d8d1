#!/usr/bin/env bash
# The per-call anchor on the GPU machine: PyTorch's caching allocator and gpu-arena (default settings)
# replay the same recorded traces in one harness (scripts/alloc_anchor.py, .cpp), alternating process
# by process, after `bash scripts/gpu_pack.sh --cdylib` (the library of .gpu/lib).
#
#   bash scripts/alloc_anchor.sh ROUNDS TRACE...      (log: $OUT/alloc-anchor.log, table: $OUT/alloc-anchor.md)
#
# REPS=N runs each trace on to N repetitions (default 6); THRASH_KIB="0 512 2048" touches that much
# other memory between calls, each in turn (default 512: what scripts/cache_profile.sh assumes of
# PyTorch's own work). In odd rounds PyTorch's allocator goes first, in even ones gpu-arena, so that
# drifts of the machine hit both alike.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
rounds=$1; shift
lib=$(ls .gpu/lib/libgpu_arena*.so | head -1)
so=$(mktemp -d)/alloc_anchor.so
log=$out/alloc-anchor.log
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  lscpu | grep -E '^Model name' || true
  python3 -c 'import torch; print("torch", torch.__version__)'
  cat .gpu/BUILD 2>/dev/null || git log -1 --format='build %h %s' 2>/dev/null || true
  echo "rounds $rounds, REPS ${REPS:-6}, THRASH_KIB ${THRASH_KIB:-512}, traces $*"; } >> "$log"
python3 scripts/alloc_anchor.py build "$so" >> "$log" 2>&1 || { echo "build failed (see $log)"; exit 1; }
for r in $(seq "$rounds"); do
  order="torch gpu-arena"
  [ $((r % 2)) = 0 ] && order="gpu-arena torch"
  for k in ${THRASH_KIB:-512}; do
    for t in "$@"; do
      for a in $order; do
        echo "== round $r $(basename "$t") thrash $k KiB $a" >> "$log"
        env -u PYTORCH_CUDA_ALLOC_CONF -u GPU_ARENA_CONF timeout 150 python3 scripts/alloc_anchor.py run \
          --so "$so" --allocator "$a" --lib "$lib" --trace "$t" --reps "${REPS:-6}" --thrash-kib "$k" >> "$log" 2>&1
      done
    done
  done
done
python3 scripts/alloc_anchor.py report "$log" > "$out/alloc-anchor.md"
cat "$out/alloc-anchor.md"
