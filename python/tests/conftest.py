"""The host-side suite runs in one process on the process-wide arenas,
configured once here: from GPU_ARENA_CONF, or the host backend (memory the
CPU can read, so tests can check contents). Tests that need a GPU and
PyTorch run in processes of their own (test_cuda.py)."""

import os

import pytest

import gpu_arena

CONF = os.environ.get("GPU_ARENA_CONF", "backend:host")


def pytest_configure(config):
    gpu_arena.configure(CONF)


@pytest.fixture
def host():
    """Skips unless the arenas run on the host backend (contents readable)."""
    if gpu_arena.backend() != "host":
        pytest.skip("needs the host backend (GPU_ARENA_CONF=backend:host)")
