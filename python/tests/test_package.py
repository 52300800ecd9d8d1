"""The package: import without torch, the shared object's exports."""

import ctypes
import os
import subprocess
import sys
import textwrap

import gpu_arena
from gpu_arena import _native


def run(code, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e)


def test_import_works_without_torch():
    # A meta-path finder that refuses torch, as on a machine without it.
    r = run(
        """
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("no torch here")
        sys.meta_path.insert(0, NoTorch())
        import gpu_arena, gpu_arena.torch, gpu_arena.vllm, gpu_arena.memory_saver
        assert "torch" not in sys.modules
        gpu_arena.configure("backend:host")
        with gpu_arena.tag("t"):
            p = gpu_arena.alloc(4096)
        gpu_arena.free(p)
        try:
            gpu_arena.torch.enable()
        except ImportError as e:
            print("enable:", e)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "enable: gpu_arena.torch needs PyTorch" in r.stdout, r.stdout


def test_one_shared_object_exports_the_c_abi():
    path = gpu_arena.library_path()
    assert os.path.basename(path).startswith("_native") and path.endswith(".so")
    lib = ctypes.CDLL(path)
    names = dict(_native.c_abi_symbols())
    assert {"gpu_arena_torch_malloc", "gpu_arena_torch_alloc", "gpu_arena_torch_free", "gpu_arena_set_tag", "gpu_arena_sleep"} <= set(names)
    for name, addr in names.items():
        f = getattr(lib, name)  # the dynamic loader finds it by name
        assert ctypes.cast(f, ctypes.c_void_p).value == addr, name
    assert (_native.TORCH_ALLOC, _native.TORCH_FREE) == ("gpu_arena_torch_malloc", "gpu_arena_torch_free")


def test_c_abi_and_python_share_the_arenas(host):
    lib = ctypes.CDLL(gpu_arena.library_path())
    lib.gpu_arena_alloc.restype = ctypes.c_void_p
    lib.gpu_arena_alloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    before = gpu_arena.stats()["stats"]["allocs"]
    p = lib.gpu_arena_alloc(1 << 20, 0, None)
    assert p
    assert gpu_arena.stats()["stats"]["allocs"] > before
    gpu_arena.free(p, 1 << 20)


def test_version():
    assert gpu_arena.__version__ == "0.1.0"
