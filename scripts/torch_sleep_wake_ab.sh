#!/usr/bin/env bash
# The first offload with and without the pinned memory obtained ahead, on a CUDA GPU machine:
# scripts/torch_sleep_wake.py --prepare none and --prepare background alternating, ROUNDS times
# (default 3), each in a process of its own (ARGS: more arguments for it, e.g. "--cycles 4"); one JSON
# line per process in $OUT/sleep_wake_ab.log. MODES: the --prepare modes (default "none background");
# CONFS: GPU_ARENA_CONF settings to alternate as well, space-separated ("-": unset, the default).
#
#   bash scripts/python_h100.sh --build                # here: the release wheel → .whl/
#   bash scripts/torch_sleep_wake_ab.sh                # there (device tool, carry [".whl"])
#   python3 scripts/torch_sleep_wake_report.py LOG     # the table (medians, min–max)
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
log="$out/sleep_wake_ab.log"
site=/tmp/gpu-arena-site
rm -rf "$site"
whl=$(ls .whl/gpu_arena-*.whl | head -1)
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 --version
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --target "$site" "$whl"
    else
        python3 -m zipfile -e "$whl" "$site"
    fi
    echo "wheel: $whl, built from $(cat .whl/COMMIT 2>/dev/null)"
} > "$log" 2>&1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for r in $(seq "${ROUNDS:-3}"); do
    for conf in ${CONFS:--}; do
        for mode in ${MODES:-none background}; do
            [ "$conf" = - ] && c= || c=$conf
            echo "== round $r: GPU_ARENA_CONF=$c --prepare $mode" >> "$log"
            GPU_ARENA_CONF=$c timeout 200 python3 scripts/torch_sleep_wake.py --prepare "$mode" ${ARGS:-} >> "$log" 2>&1
            echo "exit $?" >> "$log"
        done
    done
done
grep -cE '^\{' "$log"
