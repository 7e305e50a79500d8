"""Native CPU code for this machine's vector units (-march=native): MLX's fused kernels, and our own C++ kernels.

MLX writes each fused CPU kernel as C++ and builds it with the `g++` found on PATH, with fixed flags and no
`-march`: its `exp`/`erf` stay scalar (4-10x slower). A private wrapper that adds `-march=native` is put first on
PATH, and TMPDIR (where MLX caches built kernels, keyed by graph, not flags) is pointed at a private cache, so no
kernel built with the stock flags is ever reused and ours survive restarts. The same wrapper builds the C++ files
in `embedder/kernels` into that cache (`native_library`). Linux only; needs g++ at run time.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

# -fno-trapping-math lets g++ if-convert the selects in MLX's exp/erf, so their loops vectorize; the inlining
# limits let it inline them into the fused loop first. Neither reorders arithmetic: results are unchanged.
FLAGS = ("-march=native", "-fno-math-errno", "-fno-trapping-math",
         "--param=max-inline-insns-single=2000", "--param=max-inline-insns-auto=2000")
ENV_VAR = "EMBED_NATIVE_KERNELS"  # "0" keeps MLX's stock kernels
KERNELS = Path(__file__).parent / "kernels"
_build_lock = threading.Lock()


def native_kernels() -> bool:
    """True once fused CPU kernels build with FLAGS; False (nothing changed) where they cannot."""
    return native_cache() is not None


@functools.cache
def native_cache() -> Path | None:
    """The private kernel cache, once MLX builds its fused CPU kernels there with FLAGS; None where it cannot.

    Changes this process's PATH and TMPDIR, once; Python's own tempfile keeps the directory it had.
    """
    compiler = shutil.which("g++")
    if sys.platform != "linux" or os.environ.get(ENV_VAR, "1") == "0" or compiler is None:
        return None
    import mlx.core as mx

    cache = _cache_dir(compiler)
    wrapper = cache / "bin" / "g++"
    try:
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        script = f'#!/bin/sh\nexec "{compiler}" "$@" {" ".join(FLAGS)}\n'
        if not wrapper.exists() or wrapper.read_text() != script:
            staged = wrapper.with_suffix(f".{os.getpid()}")
            staged.write_text(script)
            staged.chmod(0o755)
            staged.replace(wrapper)
    except OSError as err:
        warnings.warn(f"embedder.cpu_compile: cannot write {wrapper} ({err}); stock kernels", RuntimeWarning, stacklevel=2)
        return None
    saved = {k: os.environ.get(k) for k in ("PATH", "TMPDIR")}
    tempfile.gettempdir()  # fix Python's temp directory before TMPDIR changes
    os.environ["PATH"] = f"{wrapper.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["TMPDIR"] = str(cache)
    try:
        mx.eval(mx.compile(lambda a: mx.exp(a) * 2.0 + 1.0)(mx.zeros(8)))
    except (RuntimeError, ValueError) as err:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        warnings.warn(f"embedder.cpu_compile: native kernels do not build ({err}); stock kernels",
                      RuntimeWarning, stacklevel=2)
        return None
    return cache


def native_library(name: str) -> ctypes.CDLL | None:
    """`kernels/<name>.cpp` built for this CPU (once per machine, cached by content) and loaded; None where
    native kernels are off or it does not build."""
    with _build_lock:  # lanes ask at once; one builds
        return _library(name)


@functools.cache
def _library(name: str) -> ctypes.CDLL | None:
    cache = native_cache()
    if cache is None:
        return None
    source = KERNELS / f"{name}.cpp"
    parts = [source, *sorted(KERNELS.glob("*.h"))]  # the headers it may include change it too
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()[:16]
    target = cache / "lib" / f"{name}-{digest}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_suffix(f".{os.getpid()}.so")  # other processes may build it too
            subprocess.run([str(cache / "bin" / "g++"), "-std=c++17", "-O3", "-Wall", "-fPIC", "-shared", str(source),
                            "-o", str(staged)], check=True, capture_output=True, text=True)
            staged.replace(target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(f"embedder.cpu_compile: {source.name} does not build ({detail}); MLX's kernels instead",
                      RuntimeWarning, stacklevel=3)
        return None


def _cache_dir(compiler: str) -> Path:
    """One directory per target: -march=native code is only valid on the CPU it was built for, so the key is what
    the compiler resolves -march=native to here (the CPU name and every ISA extension it enables), with the
    compiler's version, the flags and MLX's version. A cache shared by two kinds of CPU (a cluster's shared home)
    then never hands one the other's code."""
    import mlx.core as mx

    parts = [target_description(compiler), platform.machine(), *FLAGS, getattr(mx, "__version__", "")]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "embed" / "mlx-cpu-kernels" / key


def target_description(compiler: str) -> str:
    """`compiler --version` and its resolved target options for FLAGS (`-Q --help=target`: -march=znver4,
    -mavx512f [enabled], ...); the CPU's own name and flags where the compiler cannot say."""
    described = []
    for args in (["--version"], [*FLAGS, "-Q", "--help=target"]):
        try:
            done = subprocess.run([compiler, *args], capture_output=True, text=True, timeout=60)
            described.append(done.stdout)
        except (OSError, subprocess.SubprocessError):
            described.append("")
    if not described[1].strip():
        try:
            described.append("".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                                     if line.startswith(("model name", "flags", "Features", "CPU part"))))
        except OSError:
            pass
    return "\n".join(described)
