"""Native CPU kernels: built with the private g++ wrapper into a private cache where g++ exists; else untouched."""

import os
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from embedder.native import build
from embedder.native import fastmath


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_kernels_build_with_the_wrapper_into_the_private_cache():
    before = {k: os.environ.get(k) for k in ("PATH", "TMPDIR")}
    assert build.native_kernels()
    cache = build.native_cache()
    x = mx.array(np.linspace(-6, 6, 1001, dtype=np.float32))
    with build.native_build_env():
        assert Path(os.environ["TMPDIR"]) == cache
        wrapper = Path(os.environ["PATH"].split(os.pathsep)[0]) / "g++"
        assert wrapper == cache / "bin" / "g++" and "-march=native" in wrapper.read_text()
        np.testing.assert_array_equal(np.asarray(fastmath.gelu(x)), np.asarray(fastmath._gelu_formula(x)))
    assert {k: os.environ.get(k) for k in ("PATH", "TMPDIR")} == before
    assert list(cache.glob("mlx/*/cpu/lib*Erf*.so"))
    assert build.native_library("attention") is not None and list(cache.glob("lib/attention-*.so"))


def test_without_a_compiler_nothing_changes(monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name, path=None: None)
    before = dict(os.environ)
    assert build.native_cache.__wrapped__() is None
    assert dict(os.environ) == before


def test_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(build.ENV_VAR, "0")
    before = dict(os.environ)
    assert build.native_cache.__wrapped__() is None
    assert dict(os.environ) == before


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_a_kernel_that_does_not_build_warns_and_gives_none(tmp_path, monkeypatch):
    (tmp_path / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(build, "KERNELS", tmp_path)
    with pytest.warns(RuntimeWarning, match="broken.cpp does not build"):
        assert build._library.__wrapped__("broken") is None
    assert not list(build.native_cache().glob("lib/broken*"))


def _fake_compiler(folder: Path, march: str) -> str:
    """A compiler whose resolved target is `march`, as `g++ -march=native -Q --help=target` reports one."""
    script = folder / f"g++-{march}"
    script.write_text(f'#!/bin/sh\ncase "$*" in *--help=target*) echo "  -march=  {march}";; '
                      f'*--version*) echo "g++ 12.2.0";; esac\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux")
def test_the_cache_is_keyed_by_the_resolved_target_so_two_cpus_never_share_code(tmp_path, monkeypatch):
    """Two kinds of CPU behind one shared home directory: their kernels land in different folders."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "shared-home"))
    zen4, sapphire = _fake_compiler(tmp_path, "znver4"), _fake_compiler(tmp_path, "sapphirerapids")
    assert build._cache_dir(zen4) != build._cache_dir(sapphire)
    assert build._cache_dir(zen4) == build._cache_dir(_fake_compiler(tmp_path / "..", "znver4"))
    assert build._cache_dir(zen4).parent == tmp_path / "shared-home" / "embed" / "mlx-cpu-kernels"


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_the_real_compiler_says_what_native_resolves_to():
    described = build.target_description(shutil.which("g++"))
    assert "-march=" in described and "native" not in described.split("-march=")[1].split()[0]


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_a_path_inherited_with_the_wrapper_still_finds_the_real_compiler(monkeypatch):
    """A child of a process inside native_build_env (a Ray worker) must not wrap the wrapper: that recursed forever."""
    real = shutil.which("g++")
    monkeypatch.setenv("PATH", f"{build.native_cache() / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert build._real_compiler() == real


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_after_load_the_engine_needs_no_compiler_and_leaves_the_environment_alone(minilm_path, tmp_path,
                                                                               monkeypatch):
    """The kernels are built at load; then batches of any shape run with a g++ on PATH that only fails."""
    from embedder import EmbeddingEngine

    before = {k: os.environ.get(k) for k in ("PATH", "TMPDIR")}
    engine = EmbeddingEngine(str(minilm_path), lanes=2)
    engine.load()
    try:
        assert {k: os.environ.get(k) for k in ("PATH", "TMPDIR")} == before
        (tmp_path / "bin").mkdir()
        called = tmp_path / "g++ was called"
        (tmp_path / "bin" / "g++").write_text(f'#!/bin/sh\ntouch "{called}"\nexit 1\n')
        (tmp_path / "bin" / "g++").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
        texts = ["a", "two words", "a somewhat longer sentence " * 20] * 7
        vectors = engine.embed(texts)
        assert np.isfinite(vectors).all() and vectors.shape == (21, engine.dim)
        assert not called.exists()
    finally:
        engine.unload()
