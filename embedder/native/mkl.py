"""oneMKL's bfloat16 GEMM for `dtype="bfloat16"` on CPUs with AMX (Intel Xeon since Sapphire Rapids), whose tile
units it multiplies in: our own kernel (csrc/bf16_matmul.cpp) runs AVX512-BF16's dot products, at float32's rate
of multiply-adds, which is all a CPU without AMX has. `pip install 'embed[amx]'` installs it.

EMBED_BF16_GEMM chooses: "auto" (the default: oneMKL where /proc/cpuinfo lists amx_bf16 and it is installed),
"mkl" (oneMKL on any CPU our bfloat16 kernels build for: how the tests run this path where there is no AMX), or
"native" (our kernel everywhere).
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .blas import dist_paths

ENV_VAR = "EMBED_BF16_GEMM"
CHOICES = ("auto", "mkl", "native")
_SEQUENTIAL, _LP64 = 1, 0  # MKL_THREADING_SEQUENTIAL, MKL_INTERFACE_LP64


@functools.cache
def bf16_gemm() -> int | None:
    """The address of oneMKL's `cblas_gemm_bf16bf16f32` where EMBED_BF16_GEMM and this CPU call for it; None for
    our own kernel. Raises ModelError for a choice it cannot honour."""
    choice = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ModelError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "native" or (choice == "auto" and "amx_bf16" not in cpu_flags()):
        return None
    gemm, reason = _load()
    if gemm is not None:
        return gemm
    if choice == "mkl":
        raise ModelError(f"{ENV_VAR}=mkl: {reason}")
    warnings.warn(f"this CPU has AMX, but {reason}: bfloat16 runs on AVX512-BF16 at a fraction of its speed",
                  RuntimeWarning, stacklevel=2)
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere): what this CPU, not the build machine, has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def _load() -> tuple[int | None, str]:
    """oneMKL's bf16 GEMM, single-threaded (each engine lane is a thread of its own) and checked on one product;
    or None and why not."""
    paths = dist_paths("mkl", "libmkl_rt.so*")
    if not paths:
        return None, "oneMKL is not installed (pip install 'embed[amx]')"
    try:
        library = ctypes.CDLL(paths[0], mode=ctypes.RTLD_LOCAL)
    except OSError as err:
        return None, f"oneMKL does not load ({err})"
    library.MKL_Set_Interface_Layer(_LP64)
    if library.MKL_Set_Threading_Layer(_SEQUENTIAL) != _SEQUENTIAL:
        return None, "oneMKL already runs threaded in this process (EMBED_BLAS)"
    gemm = library.cblas_gemm_bf16bf16f32
    gemm.restype = None
    gemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                          ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    if not _gemm_is_correct(gemm):
        return None, f"oneMKL's bfloat16 GEMM gives wrong products ({paths[0]})"
    return ctypes.cast(gemm, ctypes.c_void_p).value, ""


def _gemm_is_correct(gemm) -> bool:
    """One small product of values bfloat16 holds exactly, against NumPy's: a library that loads but computes
    wrongly (another integer width) must not reach a model."""
    m, n, k = 5, 3, 7
    a = (np.arange(m * k, dtype=np.float32).reshape(m, k) - 9) / 4
    b = (np.arange(n * k, dtype=np.float32).reshape(n, k) - 5) / 8
    c = np.zeros((m, n), np.float32)
    bits = [np.ascontiguousarray((v.view(np.uint32) >> 16).astype(np.uint16)) for v in (a, b)]
    gemm(101, 111, 112, m, n, k, 1.0, bits[0].ctypes.data, k, bits[1].ctypes.data, k, 0.0, c.ctypes.data, n)
    return bool(np.array_equal(c, a @ b.T))
