#!/usr/bin/env bash
# A KV cache put to sleep as vLLM does it (scripts/torch_kv_sleep.py) on a CUDA GPU machine, with the
# GPU_ARENA_CONF settings of CONFS alternating (space-separated, "-": unset, the default), ROUNDS times
# (default 3), each in a process of its own (ARGS: more arguments for it); one JSON line per process
# in $OUT/kv_sleep_ab.log.
#
#   bash scripts/python_h100.sh --build                               # here: the wheel → .whl/
#   CONFS="tag_bulk_streak:64 -" bash scripts/torch_kv_sleep_ab.sh    # there (device tool, carry [".whl"])
#   python3 scripts/torch_kv_sleep_report.py LOG                      # the table (medians, min–max)
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
log="$out/kv_sleep_ab.log"
. scripts/wheel_site.sh
wheel_site > "$log" 2>&1
export PYTHONUNBUFFERED=1
for r in $(seq "${ROUNDS:-3}"); do
    for conf in ${CONFS:--}; do
        [ "$conf" = - ] && c= || c=$conf
        echo "== round $r: GPU_ARENA_CONF=$c" >> "$log"
        GPU_ARENA_CONF=$c timeout 200 python3 scripts/torch_kv_sleep.py ${ARGS:-} >> "$log" 2>&1
        echo "exit $?" >> "$log"
    done
done
grep -cE '^\{' "$log"
