#!/usr/bin/env bash
# Runs one of the scripts/torch_*.py probes on a CUDA GPU machine, each process on its own, alternating
# the GPU_ARENA_CONF settings of CONFS (space-separated; "-": unset, the default) and the argument sets
# of ARGSETS (";"-separated; default: one empty set), ROUNDS times (default 3); ARGS: arguments for
# every process. The wheel carried in .whl/ is installed first (scripts/wheel_site.sh); everything goes
# to $OUT/LOGNAME, one JSON line per process. Prints how many processes printed theirs.
#
#   bash scripts/torch_ab.sh SCRIPT LOGNAME
set -u
cd "$(dirname "$0")/.."
script=$1
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
log="$out/$2"
. scripts/wheel_site.sh
wheel_site > "$log" 2>&1
export PYTHONUNBUFFERED=1
IFS=';' read -ra sets <<< "${ARGSETS:-}"
[ ${#sets[@]} -gt 0 ] || sets=("")
for r in $(seq "${ROUNDS:-3}"); do
    for conf in ${CONFS:--}; do
        [ "$conf" = - ] && c= || c=$conf
        for a in "${sets[@]}"; do
            echo "== round $r: GPU_ARENA_CONF=$c $a" >> "$log"
            # shellcheck disable=SC2086 # argument sets split into words
            GPU_ARENA_CONF=$c timeout 200 python3 "$script" $a ${ARGS:-} >> "$log" 2>&1
            echo "exit $?" >> "$log"
        done
    done
done
grep -cE '^\{' "$log"
