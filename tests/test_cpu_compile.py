"""Native CPU kernels: built with the private g++ wrapper into a private cache where g++ exists; else untouched."""

import os
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from embedder import cpu_compile, fastmath


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_kernels_build_with_the_wrapper_into_the_private_cache():
    assert cpu_compile.native_kernels()
    cache = Path(os.environ["TMPDIR"])
    wrapper = Path(os.environ["PATH"].split(os.pathsep)[0]) / "g++"
    assert wrapper == cache / "bin" / "g++" and "-march=native" in wrapper.read_text()
    x = mx.array(np.linspace(-6, 6, 1001, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(fastmath.gelu(x)), np.asarray(fastmath._gelu_formula(x)))
    assert list(cache.glob("mlx/*/cpu/lib*Erf*.so"))
    assert cpu_compile.native_library("attention") is not None and list(cache.glob("lib/attention-*.so"))


def test_without_a_compiler_nothing_changes(monkeypatch):
    monkeypatch.setattr(cpu_compile.shutil, "which", lambda name: None)
    before = dict(os.environ)
    assert cpu_compile.native_cache.__wrapped__() is None
    assert dict(os.environ) == before


def test_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    before = dict(os.environ)
    assert cpu_compile.native_cache.__wrapped__() is None
    assert dict(os.environ) == before


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("g++") is None, reason="needs Linux and g++")
def test_a_kernel_that_does_not_build_warns_and_gives_none(tmp_path, monkeypatch):
    (tmp_path / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(cpu_compile, "KERNELS", tmp_path)
    with pytest.warns(RuntimeWarning, match="broken.cpp does not build"):
        assert cpu_compile._library.__wrapped__("broken") is None
    assert not list(cpu_compile.native_cache().glob("lib/broken*"))
