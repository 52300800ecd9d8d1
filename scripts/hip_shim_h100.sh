#!/usr/bin/env bash
# The HIP backend on an NVIDIA GPU, through the CUDA-mode stand-in libamdhip64
# (tests/support/hip-shim): every HIP call it makes is forwarded to the CUDA
# driver. One command on the GPU machine; logs (6 files) go to $OUT.
#
# Here, first (release test binaries with --features hip,cuda, and the
# stand-in built in release):
#   tests/support/hip-shim/build.sh release
#   HIP_PATH=/usr ../shared/tools/gpu-pack --features hip --test all --test ipc_two_process \
#       --bin gpu-arena --extra target/hip-shim/libamdhip64-release
# Then, with the device tool (carry [".gpu"], timeout_s 600):
#   bash scripts/hip_shim_h100.sh
#
# What runs, in this order (each step has its own time limit; the whole
# stays under 10 minutes):
#   hip-tests.log   every test whose name holds `hip`: the conformance suite
#                   on the HIP backend (raw and checked; RULE lines), its
#                   latency and 10 GiB tables, the driver model (the CUDA
#                   run's programs, compared call by call with the CUDA
#                   backend in the same process), the arena over HIP (free
#                   during a running CUDA kernel launched on the HIP stream,
#                   global arena, pinned-host Vec, growth, sleep/wake,
#                   threads), the HIP driver tests, peer and sharing tests;
#   cuda-tests.log  the CUDA backend's conformance and model tests (the same
#                   rules and programs on the same GPU, for comparison);
#   ipc.log         two processes sharing a buffer through the HIP backend;
#   bench-hip.txt   `gpu-arena --backend hip bench`;
#   bench-cuda.txt  `gpu-arena --backend cuda bench` (same machine, same run);
#   summary.md      the GPU, each step's result and time, and the lines for
#                   docs/conformance.md's HIP-through-the-CUDA-stand-in column.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/hip-shim-out}
mkdir -p "$out"
lib=.gpu/extra/libamdhip64-release
if [ ! -f "$lib/libamdhip64.so.5" ] || [ ! -x .gpu/tests/all ]; then
    echo "missing $lib/libamdhip64.so.5 or .gpu/tests/all: pack them first (see the top of $0)" >&2
    exit 2
fi
# The packed binaries need libamdhip64.so.5: the stand-in, first on the path.
export LD_LIBRARY_PATH="$PWD/$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# cuda by default; GPU_ARENA_HIP_SHIM=host dry-runs the script on a machine without a GPU.
export GPU_ARENA_HIP_SHIM=${GPU_ARENA_HIP_SHIM:-cuda} GPU_ARENA_REQUIRE_HIP=1 RUST_BACKTRACE=1
summary=$out/summary.md
status=0

{
    echo "# HIP backend through the CUDA-mode stand-in libamdhip64"
    echo
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
} > "$summary"

# step NAME LIMIT_S COMMAND...: runs COMMAND into $out/NAME, notes the result.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    echo "=== $name: $*"
    timeout "$limit" "$@" > "$out/$name" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then status=1; fi
    local result
    result=$(grep -E '^test result' "$out/$name" | tail -1)
    echo "- \`$name\`: exit $rc in $((SECONDS - start)) s ${result:+($result)}" | tee -a "$summary"
}

step hip-tests.log 200 .gpu/tests/all hip --test-threads=1 --nocapture
step cuda-tests.log 120 .gpu/tests/all conformance::cuda driver_model::cuda --test-threads=1 --nocapture
step ipc.log 60 .gpu/tests/ipc_two_process hip --test-threads=1 --nocapture
step bench-hip.txt 90 .gpu/bin/gpu-arena --backend hip bench
step bench-cuda.txt 90 .gpu/bin/gpu-arena --backend cuda bench

# The logs' lines, without libtest's `test NAME ... ` in front of printed ones.
lines() { sed -E 's/^test [^ ]+ \.\.\. //' "$@" 2>/dev/null; }

{
    echo
    echo "## Devices as the tests saw them"
    echo
    lines "$out/hip-tests.log" "$out/cuda-tests.log" | grep -E '^DEVICE|^HIP device 0 opened' | sort -u | sed 's/^/    /'
    echo
    echo "## Rules: HIP through the CUDA-mode stand-in (column for docs/conformance.md)"
    echo
    echo "| RULE name | hip (raw) | checked-hip |"
    echo "|---|---|---|"
    for r in $(grep -h -o -E '^RULE hip/[a-z0-9_]+' "$out/hip-tests.log" | sed 's|RULE hip/||' | sort -u); do
        raw=$(grep -h -E "^RULE hip/$r:" "$out/hip-tests.log" | sed -E 's/.* observed (.*)$/\1/' | head -1)
        chk=$(grep -h -E "^RULE checked-hip/$r:" "$out/hip-tests.log" | grep -o -E '(PASS|FAIL)$' | head -1)
        echo "| \`$r\` | $raw | ${chk:-not run} |"
    done
    echo
    grep -h -E '^RULES ' "$out/hip-tests.log" "$out/cuda-tests.log" | sed 's/^/    /'
    echo
    echo "## Driver model: the CUDA run's programs on both backends"
    echo
    lines "$out/hip-tests.log" "$out/cuda-tests.log" \
        | grep -E 'programs \(seed|programs compared|reference driver:' | sed 's/^/    /'
    echo
    echo "## Arena over HIP"
    echo
    lines "$out/hip-tests.log" | grep -E '^HIPARENA' | sed 's/^/    /'
    echo
    echo "## Failures and skips"
    echo
    grep -h -E 'FAILED|panicked|^failures:|skipped:' "$out/hip-tests.log" "$out/cuda-tests.log" "$out/ipc.log" | sed 's/^/    /' | head -40
    echo
    echo "## Bench (hip, then cuda): targets missed"
    echo
    grep -h -E '^targets missed|^total' "$out/bench-hip.txt" "$out/bench-cuda.txt" | sed 's/^/    /'
} >> "$summary"

echo "=== overall exit $status" | tee -a "$summary"
exit $status
