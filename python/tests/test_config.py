"""Configuration: the GPU_ARENA_CONF grammar, once per process."""

import pytest

import gpu_arena
from test_package import run


def test_check_config_accepts_and_refuses():
    gpu_arena.check_config("limit:60GiB,decay_ms:5000,shards:2,report:1")
    with pytest.raises(gpu_arena.ConfigError, match="limt"):
        gpu_arena.check_config("limt:1GiB")
    with pytest.raises(gpu_arena.ConfigError, match="key:value"):
        gpu_arena.check_config("limit=4")
    with pytest.raises(gpu_arena.ConfigError, match="decay_ms"):
        gpu_arena.check_config("keep_alive_fraction:0.5")
    # ConfigError is a GpuArenaError is a RuntimeError.
    assert issubclass(gpu_arena.ConfigError, gpu_arena.GpuArenaError)
    assert issubclass(gpu_arena.GpuArenaError, RuntimeError)


def test_configured_once():
    from conftest import CONF

    gpu_arena.configure(CONF)  # the same again: fine
    with pytest.raises(gpu_arena.ConfigError, match="already configured"):
        gpu_arena.configure(CONF + ",shards:3")


def test_bad_environment_is_reported_at_first_use():
    r = run(
        """
        import gpu_arena
        try:
            gpu_arena.alloc(4096)
        except gpu_arena.ConfigError as e:
            print("refused:", e)
        """,
        env={"GPU_ARENA_CONF": "backend:host,bogus:1"},
    )
    assert r.returncode == 0, r.stderr
    assert "refused: bad configuration `bogus`" in r.stdout, r.stdout


def test_configure_reads_the_environment():
    r = run(
        """
        import gpu_arena
        gpu_arena.configure()
        print(gpu_arena.backend(), gpu_arena.stats()["tags"][0]["tag"])
        """,
        env={"GPU_ARENA_CONF": "backend:host,shards:2"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["host", "default"]
