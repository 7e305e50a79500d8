"""The optimized BLAS is loaded before mlx.core, and mlx's matmuls stay correct with it."""

import os
import subprocess
import sys

import pytest

from embedder.native import blas

SCRIPT = """
import sys
import numpy as np
from embedder.native.blas import preload_blas
path = preload_blas()
import mlx.core as mx
a = np.random.default_rng(0).standard_normal((67, 129)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((129, 45)).astype(np.float32)
out = np.asarray(mx.array(a) @ mx.array(b))
ref = a.astype(np.float64) @ b
assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5, "matmul wrong"
print(path)
"""


def _run(env_blas: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != blas.ENV_VAR}
    if env_blas is not None:
        env[blas.ENV_VAR] = env_blas
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(sys.platform != "linux" or not blas._mlx_uses_reference_blas(), reason="mlx[cpu] on Linux only")
def test_preload_finds_a_fast_blas_and_matmul_is_correct():
    done = _run(None)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().splitlines()[-1]
    assert path != "None", f"no optimized BLAS found: {done.stderr}"
    assert "embed:" not in done.stderr


def test_none_disables_preload_quietly():
    done = _run("none")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "None"
    assert done.stderr == ""


@pytest.mark.skipif(sys.platform != "linux" or not blas._mlx_uses_reference_blas(), reason="mlx[cpu] on Linux only")
def test_unloadable_choice_prints_one_line_saying_how_to_fix():
    done = _run("/nonexistent/libopenblas.so.0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "None"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embed: EMBED_BLAS=") and "pip install" in lines[0]


@pytest.mark.skipif(sys.platform != "linux" or not blas._mlx_uses_reference_blas(), reason="mlx[cpu] on Linux only")
def test_after_mlx_import_it_only_warns(monkeypatch):
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    import mlx.core  # noqa: F401

    with pytest.warns(RuntimeWarning, match="already imported"):
        assert blas.preload_blas.__wrapped__() is None  # a first call, made too late


def test_a_second_call_returns_the_first_result_silently(recwarn):
    import mlx.core  # noqa: F401

    assert blas.preload_blas() == blas.preload_blas()
    assert not [w for w in recwarn if "already imported" in str(w.message)]


@pytest.mark.skipif(sys.platform != "linux" or not blas._mlx_uses_reference_blas(), reason="mlx[cpu] on Linux only")
def test_a_stray_mlx_folder_beside_the_script_does_not_hide_the_wheel(tmp_path):
    """MLX caches kernels in $TMPDIR/mlx: a script run from /tmp sees that folder as part of the `mlx` namespace."""
    (tmp_path / "mlx" / "0.32.4" / "cpu").mkdir(parents=True)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] != "None", done.stderr


@pytest.mark.skipif(sys.platform != "linux" or not blas._mlx_uses_reference_blas(), reason="mlx[cpu] on Linux only")
def test_thread_count_is_settable_unless_the_user_chose_one(monkeypatch):
    assert blas.preload_blas() is not None  # conftest loaded it
    lib = blas._loaded[0]
    threads = next(getattr(lib, n) for n in ("openblas_get_num_threads", "scipy_openblas_get_num_threads",
                                             "MKL_Get_Max_Threads") if hasattr(lib, n))
    assert blas.set_threads(1) is True and threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert blas.set_threads(2) is False and threads() == 1
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    assert blas.set_threads(cores) is True and threads() == cores
