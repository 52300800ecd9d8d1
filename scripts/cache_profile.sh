#!/usr/bin/env bash
# What one settled repetition costs the allocator in CPU work, counted rather than timed: cachegrind
# runs the C ABI replay (examples/cabi_replay, backend:host) of a recorded trace to repetition N-1 and
# to N, and scripts/cache_profile.py reports the difference (repetition N alone) per allocator call:
# instructions and first-level data-cache misses, by layer. THRASH_KIB=512 (the default here) touches
# 512 KiB of other memory between calls, as PyTorch's own work does, so that every call starts with a
# cold L1: a miss is then one distinct cache line the call touched. Cachegrind simulates the caches and
# address randomization is off (setarch -R), so counts move far less from run to run than times do
# (docs/pytorch/host-cache-profile-*.log repeats one run to show by how much).
#
# INSTR_ONLY=1 counts instructions alone (no cache simulation, no thrashing: some ten times faster);
# instruction counts do not move from run to run, so two builds' differences show exactly.
# STACK_KIB=N touches N KiB of the stack below the harness's frame before each call (PyTorch's own
# calls run on the same stack, so its lines are rarely cold in a real run): the lines a call touches
# less those of its stack frames. BY_FUNCTION=1 adds the 40 functions touching the most lines,
# BY_SYMBOL=1 the 20 compiled functions running the most instructions (what was inlined into them
# included), and KEEP=DIR keeps the two cachegrind outputs. EXTRA=",key:value" adds GPU_ARENA_CONF settings
# (two settings of one build compared); GA_ENV="NAME=VALUE ..." passes more variables into the fixed
# environment (a patched build's own switches).
# PAGES=1 simulates a first-level cache of 64 lines of 4 KiB each, fully associative, instead of the
# machine's: a model of the data TLB, which the 512 KiB touched between calls (128 pages) empties, so a
# "miss" is then one distinct 4 KiB page the call touched, each needing an address translation
# (PyTorch's work between calls evicts those too: docs/pytorch.md, "Groups formed at the take").
#
#   cargo build --release --example cabi_replay && bash scripts/cache_profile.sh TRACE N [BIN]
#
# N must be a settled repetition (no VMM call), e.g. 4 for bert_infer-r3 and gpt2_generate-r3, 15
# for train-r3 (which settles at 13). The host backend's own bookkeeping (gpu_arena::driver, the
# driver on a GPU) and the replay harness are left out. decay_ms is set to a day: under cachegrind
# the replay runs some 50 times slower, and idle memory must not decay as it would not natively. The
# background reclaimer is off (background:0): it wakes on a timer, so under cachegrind its work and
# the lines it evicts from the one simulated cache would land at different points in each run.
set -euo pipefail
cd "$(dirname "$0")/.."
trace=$1; n=$2; bin=${3:-target/release/examples/cabi_replay}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# The binary runs from a path of the same length whatever build it is: the program's arguments lie at
# the top of the stack like its environment, and two paths of different lengths moved one build's
# cold-stack line counts by 5 per call (docs/pytorch/host-instructions-hot-20261128.log).
# BIN_NAME=NAME names that copy instead (another length): the heap's and the stack's layout move with it,
# which shows how much of a difference in lines per call between two builds is layout.
cp "$bin" "$tmp/${BIN_NAME:-cabi_replay}"; bin=$tmp/${BIN_NAME:-cabi_replay}
if [ -n "${INSTR_ONLY:-}" ]; then sim=no; thrash=0; else sim=yes; thrash=${THRASH_KIB:-512}; fi
# `env -i` with a fixed environment: the environment's strings lie at the top of the stack, so their
# length moves every stack frame and changes how many cache lines the frames straddle (several
# lines per call between two shells).
# WHOLE=1: a trace without repetition marks (serve.trace.jsonl.gz) is replayed whole N-1 and N times
# instead, and the difference is its N-th pass.
for r in $((n - 1)) $n; do
  if [ -n "${WHOLE:-}" ]; then times=(); args=("$r" "$trace"); else times=(RUN_ON=$r); args=(1 "$trace"); fi
  env -i PATH="$PATH" ${GA_ENV:-} GPU_ARENA_CONF=backend:host,decay_ms:86400000,background:0${EXTRA:-} \
    THRASH_KIB=$thrash STACK_KIB=${STACK_KIB:-0} "${times[@]}" setarch "$(uname -m)" -R valgrind --tool=cachegrind --cache-sim=$sim ${PAGES:+--D1=262144,64,4096} --cachegrind-out-file="$tmp/cg.$r" \
    "$bin" "${args[@]}" > "$tmp/log.$r" 2>&1 &
done
wait
WHOLE=${WHOLE:-} BY_SYMBOL=${BY_SYMBOL:-} PAGES=${PAGES:-} python3 scripts/cache_profile.py "$tmp/cg.$((n - 1))" "$tmp/cg.$n" "$trace"
if [ -n "${KEEP:-}" ]; then cp "$tmp"/cg.* "$KEEP"/; fi
