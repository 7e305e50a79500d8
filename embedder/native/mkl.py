"""oneMKL's bfloat16 and int8 GEMMs for `dtype="bfloat16"` and `"int8"` on CPUs with AMX (Intel Xeon since
Sapphire Rapids), whose tile units they multiply in: our own kernels (csrc/bf16_matmul.cpp, int8_matmul.cpp) run
AVX512-BF16's and AVX512-VNNI's dot products, all a CPU without AMX has. `pip install 'embed[amx]'` installs it.

EMBED_GEMM chooses: "auto" (the default: oneMKL for a dtype whose AMX flag, amx_bf16 or amx_int8, /proc/cpuinfo
lists, where it is installed), "mkl" (oneMKL on any CPU our kernels build for: how the tests run this path where
there is no AMX), or "native" (our kernels everywhere).
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

ENV_VAR = "EMBED_GEMM"
CHOICES = ("auto", "mkl", "native")
AMX_FLAGS = {"bfloat16": "amx_bf16", "int8": "amx_int8"}
_SEQUENTIAL, _LP64 = 1, 0  # MKL_THREADING_SEQUENTIAL, MKL_INTERFACE_LP64
_I, _F, _P = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {  # row-major x @ w.T for bfloat16; column-major with offsets for int8
    "bfloat16": ("cblas_gemm_bf16bf16f32", [_I] * 6 + [_F, _P, _I, _P, _I, _F, _P, _I]),
    "int8": ("cblas_gemm_s8u8s32", [_I] * 7 + [_F, _P, _I, ctypes.c_int8, _P, _I, ctypes.c_int8, _F, _P, _I, _P]),
}


@functools.cache
def gemm(dtype: str) -> int | None:
    """The address of oneMKL's GEMM for `dtype` ("bfloat16" or "int8") where EMBED_GEMM and this CPU call for
    it; None for our own kernel. Raises ModelError for a choice it cannot honour."""
    choice = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ModelError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "native" or (choice == "auto" and AMX_FLAGS[dtype] not in cpu_flags()):
        return None
    library, reason = _library()
    function = library and _checked(library, dtype)
    if function is None and library is not None:
        reason = f"oneMKL's {dtype} GEMM gives wrong products"
    if function is not None:
        return ctypes.cast(function, ctypes.c_void_p).value
    if choice == "mkl":
        raise ModelError(f"{ENV_VAR}=mkl: {reason}")
    warnings.warn(f"this CPU has AMX, but {reason}: {dtype} runs without it, at a fraction of its speed",
                  RuntimeWarning, stacklevel=2)
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere): what this CPU, not the build machine, has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """oneMKL, single-threaded (each engine lane is a thread of its own); or None and why not."""
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
    return library, ""


def _checked(library: ctypes.CDLL, dtype: str):
    """`dtype`'s GEMM, typed, if one small product of values it holds exactly equals NumPy's: a library that loads
    but computes wrongly (another integer width) must not reach a model; else None."""
    name, argtypes = _SIGNATURES[dtype]
    function = getattr(library, name)
    function.restype, function.argtypes = None, argtypes
    m, n, k = 5, 3, 7
    a = np.arange(m * k, dtype=np.float32).reshape(m, k) - 9
    b = np.arange(n * k, dtype=np.float32).reshape(n, k) - 5
    if dtype == "bfloat16":
        c = np.zeros((m, n), np.float32)
        bits = [np.ascontiguousarray((v.view(np.uint32) >> 16).astype(np.uint16)) for v in (a / 4, b / 8)]
        function(101, 111, 112, m, n, k, 1.0, bits[0].ctypes.data, k, bits[1].ctypes.data, k, 0.0, c.ctypes.data, n)
        return function if np.array_equal(c, (a / 4) @ (b / 8).T) else None
    c, no_offset = np.zeros((m, n), np.int32), np.zeros(1, np.int32)
    x, w = (a + 9).astype(np.uint8), b.astype(np.int8)  # column-major C (n, m) = w (n, k) @ x.T: y's memory
    function(102, 112, 111, 173, n, m, k, 1.0, w.ctypes.data, k, 0, x.ctypes.data, k, 0, 0.0, c.ctypes.data, n,
             no_offset.ctypes.data)
    return function if np.array_equal(c, x.astype(np.int32) @ w.T.astype(np.int32)) else None
