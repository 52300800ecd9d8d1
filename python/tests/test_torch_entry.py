"""The allocation entry point PyTorch gets throws a C++ exception on failure
(PyTorch does not check for NULL); checked from a C++ program that calls it
the way PyTorch does. Skipped without a C++ compiler or libpython."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_failed_allocation_throws_runtime_error(tmp_path):
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ldversion = sysconfig.get_config_var("LDVERSION")
    if not cxx or not ldversion or not os.path.exists(os.path.join(libdir, f"libpython{ldversion}.so")):
        pytest.skip("needs a C++ compiler and a shared libpython")
    exe = tmp_path / "throw_check"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-o", str(exe), os.path.join(HERE, "throw_check.cpp"),
         f"-I{sysconfig.get_paths()['include']}", f"-L{libdir}", f"-lpython{ldversion}",
         f"-Wl,-rpath,{libdir}", "-ldl"],
        check=True,
    )
    env = dict(os.environ)
    env["GPU_ARENA_CONF"] = "backend:host,limit:64MiB"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "small allocation: ok" in r.stdout
    assert "caught: gpu-arena: cannot allocate 1073741824 bytes: out of memory" in r.stdout, r.stdout
    assert "zero bytes: null" in r.stdout, "a zero-size request is NULL, as PyTorch's own"
