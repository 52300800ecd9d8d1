"""Runs a workload of the shared torch_workloads.py with gpu-arena made
PyTorch's allocator by `gpu_arena.torch.enable()` (the package's path, not
a hand-written CUDAPluggableAllocator).

usage: python3 scripts/torch_workload_enable.py WORKLOADS.py WORKLOAD [ARGS...]

torch_workloads.py runs at import time, so this script enables gpu-arena,
then runs it as __main__ with `--alloc` naming the package's shared object:
the workload reports itself as a pluggable-allocator run (no PyTorch
allocator stats), and its own allocator swap is skipped because enable()
has done it. Prints one more line: gpu-arena's peaks from gpu_arena.stats().
"""

import os
import runpy
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch  # noqa: E402

import gpu_arena  # noqa: E402
import gpu_arena.torch  # noqa: E402

gpu_arena.torch.enable()
path, rest = sys.argv[1], sys.argv[2:]
torch.cuda.memory.change_current_allocator = lambda allocator: None  # enable() did it
sys.argv = [path, *rest, "--alloc", f"{gpu_arena.library_path()}:gpu_arena_torch_alloc:gpu_arena_torch_free"]
runpy.run_path(path, run_name="__main__")
s = gpu_arena.stats()
st = s["stats"]
print(
    f"gpu-arena via gpu_arena.torch.enable(): backend {s['backend']}, peak live {st['peak_live'] / 2**20:.1f} MiB, "
    f"peak committed {st['peak_committed'] / 2**20:.1f} MiB, peak committed / peak live {s['peak_ratio']:.4f}, "
    f"allocs {st['allocs']}, frees {st['frees']}",
    flush=True,
)
