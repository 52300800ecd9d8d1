#!/usr/bin/env bash
# The Python package on a CUDA GPU machine (no Rust toolchain, no network):
# build the wheel here, carry it, install it there, run everything.
#
#   bash scripts/python_h100.sh --build     # here: release wheel + pytest's wheels + the shared workloads → .whl/
#   bash scripts/python_h100.sh             # there (device tool, carry [".whl"]): logs → $OUT
#
# On the GPU machine it installs the wheel into a folder of its own
# (pip install --no-index --no-deps --target) and runs, each log a file of $OUT:
#   env.log         GPU, driver, Python, torch, transformers, the wheel and the commit it was built from
#   pytest.log      pytest python/tests -v: the host-side suite, then every CUDA check in its own
#                   process (basic, autograd_tags, sleep_wake, graphs, vllm_sequence, vllm_oom),
#                   each printing a `RESULT {json}` line
#   workloads.log   ../shared/bench/torch_workloads.py (gpt2_generate, bert_infer) under PyTorch's
#                   allocator and through gpu_arena.torch.enable(), alternating
#   sleep_wake.log  python/examples/sleep_wake.py (the README's example), then
#                   scripts/torch_sleep_wake.py: GPT-2 generation, two sleep/wake cycles, timings
#   summary.log     one line per part with its exit status
# `python3 scripts/python_h100_report.py $OUT` turns them into the results section of docs/python.md.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = --build ]; then
    set -e
    rm -rf .whl && mkdir -p .whl/deps
    python3 -m maturin --version >/dev/null 2>&1 || python3 -m pip install -q 'maturin>=1.5,<2'
    python3 -m maturin build --release --locked -m python/Cargo.toml -o .whl
    # pytest for the GPU machine's Python (3.12), as wheels: it has no network.
    python3 -m pip download -q --only-binary :all: --python-version 3.12 --dest .whl/deps pytest
    cp ../shared/bench/torch_workloads.py .whl/
    git rev-parse --short HEAD > .whl/COMMIT
    git status --porcelain --untracked-files=no | grep -q . && echo "(uncommitted changes)" >> .whl/COMMIT
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    du -sh .whl
    ls -l .whl .whl/deps
    echo 'now: device tool run, carry [".whl"], command: bash scripts/python_h100.sh'
    exit 0
fi

out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
summary="$out/summary.log"
: > "$summary"
part() { echo "$1: exit $2" | tee -a "$summary"; }

. scripts/wheel_site.sh
wheel_site pytest > "$out/env.log" 2>&1
part install $?
python3 -c 'import torch, transformers, gpu_arena; print("torch", torch.__version__, "transformers", transformers.__version__, "gpu_arena", gpu_arena.__version__, gpu_arena.library_path())' >> "$out/env.log" 2>&1
part versions $?

# The suite: the host-side tests on the host backend in this process, the
# CUDA checks each in a process of its own on the GPU.
GPU_ARENA_CONF=backend:host timeout 420 python3 -m pytest -v -rA -p no:cacheprovider python/tests > "$out/pytest.log" 2>&1
part pytest $?
grep -E "^(PASSED|FAILED|SKIPPED|ERROR) |[0-9]+ (passed|failed)" "$out/pytest.log" >> "$summary"

# The shared workloads: PyTorch's allocator and gpu_arena.torch.enable(), alternating.
for w in gpt2_generate bert_infer; do
    for r in 1 2; do
        echo "== $w run $r: PyTorch default" >> "$out/workloads.log"
        timeout 120 python3 .whl/torch_workloads.py "$w" >> "$out/workloads.log" 2>&1
        part "workload $w default run $r" $?
        echo "== $w run $r: gpu_arena.torch.enable()" >> "$out/workloads.log"
        timeout 120 python3 scripts/torch_workload_enable.py .whl/torch_workloads.py "$w" >> "$out/workloads.log" 2>&1
        part "workload $w gpu-arena run $r" $?
    done
done
grep -E "time_s=|gpu-arena via" "$out/workloads.log" >> "$summary"

timeout 120 python3 python/examples/sleep_wake.py > "$out/sleep_wake.log" 2>&1
part "python/examples/sleep_wake.py (the README's example)" $?
echo "== scripts/torch_sleep_wake.py" >> "$out/sleep_wake.log"
timeout 200 python3 scripts/torch_sleep_wake.py >> "$out/sleep_wake.log" 2>&1
part sleep_wake $?
grep -E '^\{' "$out/sleep_wake.log" | tail -1 | cut -c1-400 >> "$summary"
cat "$summary"
