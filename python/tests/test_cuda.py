"""gpu-arena as PyTorch's allocator on a CUDA GPU: each check of
cuda_checks.py in a process of its own (skipped without torch or a GPU)."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda():
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


REASON = _cuda()


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("name", ["basic", "autograd_tags", "sleep_wake", "graphs", "vllm_sequence", "vllm_oom"])
def test_cuda(name):
    env = dict(os.environ)
    # The checks run on the GPU: the suite's host backend is not theirs.
    env["GPU_ARENA_CONF"] = os.environ.get("GPU_ARENA_CUDA_CONF", "backend:cuda")
    r = subprocess.run(
        [sys.executable, os.path.join(HERE, "cuda_checks.py"), name],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    print(r.stdout)
    print(r.stderr[-4000:], file=sys.stderr)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    assert f"check {name}: passed" in r.stdout
