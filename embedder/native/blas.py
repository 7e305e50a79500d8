"""Loads an optimized BLAS before mlx.core, whose Linux CPU wheel links netlib's reference BLAS (~7 GFLOP/s).

A library exporting `cblas_sgemm`, loaded with RTLD_GLOBAL before `mlx.core` is imported, takes the place of
the reference one for every matmul MLX runs on the CPU (~25-60x faster).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ENV_VAR = "EMBED_BLAS"
FIX_HINT = (
    "slow CPU matmuls (mlx's reference BLAS); for a 25-60x faster one run "
    "`pip install 'embed[cpu]'` (scipy-openblas32), or `apt-get install libopenblas0-pthread`, "
    "or point EMBED_BLAS at a libopenblas/libmkl_rt (EMBED_BLAS=none silences this)"
)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
_SET_THREADS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads", "MKL_Set_Num_Threads")
_loaded: list[ctypes.CDLL] = []  # the BLAS preload_blas loaded, if any
_sgemms: list = []  # its cblas_sgemm, typed, for matmuls the native kernels run on their caller's thread


@functools.cache
def preload_blas() -> str | None:
    """Load the best BLAS found and return its path; None when not needed, not wanted or not found.

    Must run before the first `import mlx.core`: symbols are bound when libmlx is loaded. Runs once a process.
    """
    choice = os.environ.get(ENV_VAR, "").strip()
    if sys.platform != "linux" or choice.lower() == "none" or not _mlx_uses_reference_blas():
        return None
    if "mlx.core" in sys.modules:
        warnings.warn("embedder.native.blas: mlx.core is already imported; the optimized BLAS cannot replace its own",
                      RuntimeWarning, stacklevel=2)
        return None
    loaders = [lambda: _load(choice)] if choice else [_load_scipy_openblas, _load_mkl, _load_system_openblas]
    for loader in loaders:
        path = loader()
        if path is not None:
            return path
    reason = f"EMBED_BLAS={choice} could not be loaded as a BLAS; " if choice else ""
    print(f"embed: {reason}{FIX_HINT}", file=sys.stderr)
    return None


def _mlx_uses_reference_blas() -> bool:
    """The Linux CPU wheel bundles netlib's libblas beside itself (`mlx_cpu.libs`); other builds do not.

    `mlx` is a namespace package, so a stray `mlx/` folder on sys.path (MLX's own kernel cache in /tmp, when a
    script runs from /tmp) can come first in its search locations: look at every one.
    """
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        glob.glob(str(Path(location).parent / "mlx*.libs" / "libblas*.so*"))
        for location in spec.submodule_search_locations
    )


def _load(path: str, prefix: str = "") -> str | None:
    """Open `path`, check one sgemm against numpy, then make its symbols global for libmlx to bind to."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    sgemm = getattr(lib, f"{prefix}cblas_sgemm", None)
    if sgemm is None or not _sgemm_is_correct(sgemm):
        return None
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # same handle, promoted to the global scope
    _loaded.append(lib)
    sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    _sgemms.append(sgemm)
    set_threads(len(os.sched_getaffinity(0)))
    return path


def _load_scipy_openblas() -> str | None:
    """PyPI `scipy-openblas32` (what NumPy and SciPy build on) picks its kernels for the CPU at run time, but its
    symbols carry a `scipy_` prefix: a small shim exporting the plain `cblas_*gemm` names forwards to them."""
    for path in dist_paths("scipy-openblas32", "libscipy_openblas.so"):
        shim = _shim_for(path)
        if shim is not None and _load(path, prefix="scipy_"):
            ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
            return path
    return None


def _shim_for(library: str) -> Path | None:
    """`kernels/blas_shim.c` built against `library` (once per machine, cached by both); None without a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = Path(__file__).parent / "csrc" / "blas_shim.c"
    key = hashlib.sha256(source.read_bytes() + library.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = base / "embed" / "blas-shim" / f"cblas-{key}.so"
    if target.exists():
        return target
    folder = os.path.dirname(library)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(f".{os.getpid()}.so")  # other processes may build it too
        subprocess.run([compiler, "-O2", "-fPIC", "-shared", str(source), "-o", str(staged), f"-L{folder}",
                        f"-l:{os.path.basename(library)}", f"-Wl,-rpath,{folder}"],
                       check=True, capture_output=True, timeout=120)
        staged.replace(target)
    except (OSError, subprocess.SubprocessError):
        return None
    return target


def _load_mkl() -> str | None:
    """PyPI `mkl` installs from pip alone: ~200 GFLOP/s, about half of OpenBLAS on AMD cores."""
    return next(filter(None, map(_load, dist_paths("mkl", "libmkl_rt.so*"))), None)


def _load_system_openblas() -> str | None:
    name = ctypes.util.find_library("openblas")
    return _load(name) if name else None


def dist_paths(dist: str, pattern: str) -> list[str]:
    """Files of an installed distribution whose name matches `pattern`."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [str(Path(f.locate()).resolve()) for f in files if fnmatch.fnmatch(f.name, pattern)]


def _sgemm_is_correct(sgemm) -> bool:
    """A BLAS that loads but computes wrongly (bad ABI, wrong integer width) must not reach the model."""
    import numpy as np

    m, k, n = 7, 5, 3
    a = np.arange(m * k, dtype=np.float32).reshape(m, k) / 10
    b = np.arange(k * n, dtype=np.float32).reshape(k, n) - 4
    c = np.zeros((m, n), dtype=np.float32)
    ptr = ctypes.POINTER(ctypes.c_float)
    sgemm.restype = None
    sgemm(101, 111, 111, m, n, k, ctypes.c_float(1.0), a.ctypes.data_as(ptr), k,  # row-major, no T
                    b.ctypes.data_as(ptr), n, ctypes.c_float(0.0), c.ctypes.data_as(ptr), n)
    return bool(np.allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5))


def sgemm():
    """The loaded BLAS's `cblas_sgemm` (row-major C = alpha A B + beta C, ctypes-typed; the call releases the GIL),
    or None where MLX runs its own."""
    return _sgemms[0] if _sgemms else None


def set_threads(n: int) -> bool:
    """Threads per matmul for the BLAS loaded here, unless the user chose a count (OPENBLAS_NUM_THREADS & co.);
    False where nothing was set."""
    if any(os.environ.get(v) for v in _THREAD_VARS):
        return False
    for lib in _loaded:
        for name in _SET_THREADS:
            if hasattr(lib, name):
                getattr(lib, name)(ctypes.c_int(n))
                return True
    return False
