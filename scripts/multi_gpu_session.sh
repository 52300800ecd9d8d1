#!/usr/bin/env bash
# The whole multi-GPU run in one command, for a machine of 4 GPUs (it also
# runs on 2: the steps that need 4 say so and skip). Results and raw logs go
# to $OUT (8 files); `scripts/multi_gpu_report.py` turns them into the
# tables of docs/multi-gpu.md (it runs here as the last step too).
#
# Build, on a machine with the Rust toolchain, from the repository root:
#
#   ../shared/tools/gpu-pack --test all --test ipc_two_process --bin gpu-arena --cdylib \
#       --extra scripts/multi_gpu_session.sh --extra scripts/nccl_allreduce.py \
#       --extra scripts/ddp_train.py --extra scripts/multi_gpu_report.py
#
# Then one device call: kind nvidia-h100-x4, carry [".gpu"], timeout_s 600,
# command:
#
#   bash .gpu/extra/multi_gpu_session.sh
#
# The machine needs no Rust toolchain (Python 3 with torch for the NCCL and
# training steps). NVLink multicast stays off in every process started here.
#
# Steps (limit / expected seconds on 4 x H100): inventory and `gpu-arena
# info` (30 / 8), the peer-access tests (90 / 20), the two-process IPC tests
# (60 / 10), NCCL all-reduce on 2 GPUs with the registration and sleep/wake
# probes (150 / 50), on 4 GPUs (100 / 35), DDP training on 2 GPUs, four runs
# alternating the allocators (150 / 45), on 4 GPUs (150 / 50), the report
# (20 / 3): about 3.5 minutes expected. Every step runs under `timeout`; a
# failing step does not stop the next; inside the NCCL and DDP steps each
# phase or run has its own timeout (45 / 35 s), so one hang costs one phase;
# no step starts past the script's budget (540 s), and each step's limit is
# cut to what is left of it.
set -u

G=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # the pack: .gpu/
OUT=${OUT:-/tmp/multi-gpu-out}
mkdir -p "$OUT"
BUDGET=${MULTI_GPU_BUDGET:-540}
START=$SECONDS

# Never NVLink SHARP / multicast on the lent machines.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
export PYTHONUNBUFFERED=1

LIB=$G/lib/libgpu_arena.so
STEPS=$OUT/steps.txt
: > "$STEPS"
echo "pack $G, out $OUT, budget ${BUDGET}s, started $(date -u +%FT%TZ)" >> "$STEPS"

# step NAME LIMIT LOG CMD...: runs CMD under timeout (cut to the budget
# left), appending its output to LOG; records rc and seconds in steps.txt.
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        echo "STEP $name rc=skipped seconds=0 limit=$limit (budget spent)" >> "$STEPS"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    echo "=== STEP $name (limit ${limit}s, $(date -u +%T)): $*" >> "$log"
    timeout -k 5 "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    local secs=$((SECONDS - t0))
    echo "=== END $name rc=$rc seconds=$secs" >> "$log"
    echo "STEP $name rc=$rc seconds=$secs limit=$limit" >> "$STEPS"
}

inventory() {
    nvidia-smi -L
    nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,clocks.max.sm \
        --format=csv
    nvidia-smi topo -m
    python3 - <<'PY'
import torch
print(f"PYTHON_TORCH torch={torch.__version__} cuda={torch.version.cuda} "
      f"nccl={'.'.join(map(str, torch.cuda.nccl.version()))} devices={torch.cuda.device_count()}")
PY
    "$G/bin/gpu-arena" info
    "$G/bin/gpu-arena" info --json | python3 -c \
        'import json, sys; print("INFO_JSON", json.dumps(json.load(sys.stdin)))'
}

export -f inventory
export G
step inventory 30 "$OUT/inventory.txt" bash -c inventory

# Peer access (kernels of every GPU on GPU 0's arena memory, revoke, costs)
# and IPC inside one process, then across processes and GPUs.
step peer_tests 90 "$OUT/tests.log" \
    "$G/tests/all" peer_ipc --test-threads=1 --nocapture
step ipc_tests 60 "$OUT/tests.log" \
    "$G/tests/ipc_two_process" --test-threads=1 --nocapture

export GPU_ARENA_CONF=report:1
step nccl_2gpu 150 "$OUT/nccl.log" env CUDA_VISIBLE_DEVICES=0,1 \
    python3 "$G/extra/nccl_allreduce.py" --lib "$LIB" --world 2 --probe \
    --phase-timeout 45 --out "$OUT/nccl.jsonl"
step nccl_4gpu 100 "$OUT/nccl.log" env CUDA_VISIBLE_DEVICES=0,1,2,3 \
    python3 "$G/extra/nccl_allreduce.py" --lib "$LIB" --world 4 \
    --phase-timeout 45 --out "$OUT/nccl.jsonl"
step ddp_2gpu 150 "$OUT/ddp.log" env CUDA_VISIBLE_DEVICES=0,1 \
    python3 "$G/extra/ddp_train.py" --lib "$LIB" --world 2 \
    --runs default,gpu-arena,default,gpu-arena --run-timeout 35 --out "$OUT/ddp.jsonl"
step ddp_4gpu 150 "$OUT/ddp.log" env CUDA_VISIBLE_DEVICES=0,1,2,3 \
    python3 "$G/extra/ddp_train.py" --lib "$LIB" --world 4 \
    --runs gpu-arena,default,gpu-arena,default --run-timeout 35 --out "$OUT/ddp.jsonl"
unset GPU_ARENA_CONF

echo "TOTAL seconds=$((SECONDS - START))" >> "$STEPS"
step report 20 "$STEPS" python3 "$G/extra/multi_gpu_report.py" "$OUT" --write "$OUT/report.md"
cat "$STEPS"
