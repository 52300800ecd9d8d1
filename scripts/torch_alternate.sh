#!/usr/bin/env bash
# PyTorch's caching allocator and gpu-arena, alternating process by process on one GPU, for the
# workloads of scripts/torch_bench.py; after `gpu-pack --cdylib --extra ../shared/bench/torch_workloads.py`
# and `git log -1 --format='build %h %s' > .gpu/BUILD` (the build named in each log).
#
#   bash scripts/torch_alternate.sh PROCESSES REPEAT WORKLOAD...     (logs: $OUT/torch-WORKLOAD.log)
#
# Each process runs one workload REPEAT times (scripts/torch_bench.py --repeat) and prints one REP line
# per repetition; gpu-arena runs with its default settings plus report:1 (time inside its calls). The
# allocators alternate process by process, and each round starts one place further along the list
# (round 1: default, gpu-arena; round 2: gpu-arena, default; ...), so that a machine that speeds up
# or slows down through a round (clocks, caches, a neighbour) does not always favour the same one.
# scripts/torch_report.py turns the logs into the tables of docs/pytorch.md.
# SETTINGS="stitch_repair:0 stitch_repair:1" runs gpu-arena once per setting in each round (labelled
# "gpu-arena SETTING"), each added to report:1.
# LIBS="base=PATH new=PATH" runs gpu-arena once per library in each round instead (labelled
# "gpu-arena LABEL"), to compare two builds of gpu-arena in one call; NO_DEFAULT=1 leaves PyTorch's
# default out of the rounds then (more rounds of the two builds in one call's time).
# TIMED_DEFAULT=1 also runs PyTorch's caching allocator behind the pluggable wrapper with its calls
# timed (scripts/torch_timed_default.cpp, built here first; labelled "default-timed") in each round,
# next after the default in the rotation: its time per call beside gpu-arena's.
# AB_WITHIN=1 with LIBS of two builds runs both in each process instead (scripts/ab_shim.c, built here
# with cc unless .gpu/ab_shim.so was carried; scripts/torch_bench.py --ab): repetitions alternate between
# the builds, process p starting with build (p - 1) % 2; REPEAT counts the repetitions of both, and
# scripts/torch_ab_report.py pairs them. PyTorch's default is left out.
# BENCH_ARGS="--profile" passes more arguments to every scripts/torch_bench.py run (--profile: the GPU's
# busy and kernel time per repetition, which torch_report.py pairs by round).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
procs=$1; reps=$2; shift 2
lib=$(ls .gpu/lib/libgpu_arena*.so | head -1)
# The runs of each round, in order: "kind|label|setting|library" (kind: default, timed or arena).
runs=("default|||")
[ -n "${NO_DEFAULT:-}" ] && [ -n "${LIBS:-}" ] && runs=()
[ -n "${TIMED_DEFAULT:-}" ] && runs+=("timed|||")
if [ -n "${LIBS:-}" ]; then
  for spec in $LIBS; do runs+=("arena|${spec%%=*}||${spec#*=}"); done
else
  for s in ${SETTINGS:-default}; do
    [ "$s" = default ] && s=
    runs+=("arena|$s|$s|$lib")
  done
fi
if [ -n "${AB_WITHIN:-}" ]; then
  read -ra specs <<< "${LIBS:?AB_WITHIN needs LIBS of two builds}"
  [ ${#specs[@]} -eq 2 ] || { echo "AB_WITHIN needs exactly two builds in LIBS"; exit 1; }
  runs=("ab|${specs[0]%%=*} ${specs[1]%%=*}||${specs[0]#*=} ${specs[1]#*=}")
  ab_shim=.gpu/ab_shim.so
  if [ ! -f "$ab_shim" ]; then
    ab_shim=$(mktemp -d)/ab_shim.so
    cc -O2 -shared -fPIC -o "$ab_shim" scripts/ab_shim.c -ldl || { echo "building scripts/ab_shim.c failed"; exit 1; }
  fi
fi
shim=
if [ -n "${TIMED_DEFAULT:-}" ]; then
  shim=$(mktemp -d)/torch_timed_default.so
  python3 scripts/alloc_anchor.py build "$shim" --src scripts/torch_timed_default.cpp > "$out/timed-default-build.log" 2>&1 \
    || { echo "building the timed default failed (see $out/timed-default-build.log)"; exit 1; }
fi
for w in "$@"; do
  log="$out/torch-$w.log"
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    cat .gpu/BUILD 2>/dev/null || git log -1 --format='build %h %s' 2>/dev/null || true; } >> "$log"
  for p in $(seq "$procs"); do
    for i in $(seq 0 $((${#runs[@]} - 1))); do
      IFS='|' read -r kind label setting path <<< "${runs[$(( (i + p - 1) % ${#runs[@]} ))]}"
      case $kind in
        default)
          echo "== process $p $w default" >> "$log"
          env -u PYTORCH_CUDA_ALLOC_CONF timeout 300 python3 scripts/torch_bench.py "$w" --repeat "$reps" ${BENCH_ARGS:-} >> "$log" 2>&1 ;;
        timed)
          echo "== process $p $w default-timed" >> "$log"
          env -u PYTORCH_CUDA_ALLOC_CONF timeout 300 python3 scripts/torch_bench.py "$w" --repeat "$reps" ${BENCH_ARGS:-} --timed-default "$shim" >> "$log" 2>&1 ;;
        arena)
          echo "== process $p $w gpu-arena${label:+ $label}" >> "$log"
          GPU_ARENA_CONF=report:1${setting:+,$setting} timeout 300 python3 scripts/torch_bench.py "$w" --repeat "$reps" ${BENCH_ARGS:-} --alloc "$path" >> "$log" 2>&1 ;;
        ab)
          read -r l0 l1 <<< "$path"
          echo "== process $p $w ab $label (first: $(( (p - 1) % 2 )))" >> "$log"
          AB_LIB_0=$l0 AB_LIB_1=$l1 AB_NAMES=$label GPU_ARENA_CONF=report:1 timeout 300 python3 scripts/torch_bench.py "$w" --repeat "$reps" ${BENCH_ARGS:-} --ab "$ab_shim" --ab-start $(( (p - 1) % 2 )) >> "$log" 2>&1 ;;
      esac
    done
  done
  grep -c '^REP' "$log" | sed "s/^/$w: REP lines: /"
done
