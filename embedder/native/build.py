"""Native CPU code for this machine's vector units (-march=native): MLX's fused kernels, and our own C++ kernels.

MLX writes each fused CPU kernel as C++ and builds it with the `g++` found on PATH, with fixed flags and no
`-march`: its `exp`/`erf` stay scalar (4-10x slower). Inside `native_build_env()` a private wrapper that adds
`-march=native` is first on PATH, and TMPDIR (where MLX caches built kernels, keyed by graph, not flags) is a
private cache, so no kernel built with the stock flags is reused and ours survive restarts. The engine builds its
model's kernels there once, at load, under a lock; outside that block the process's PATH and TMPDIR are its own, so
child processes (a compiler, a Ray worker) never inherit the wrapper. The same wrapper builds the C++ files in
`embedder/native/csrc` into that cache (`native_library`). Linux only; needs g++ at run time.
"""

from __future__ import annotations

import contextlib
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
KERNELS = Path(__file__).parent / "csrc"
CACHE_FOLDER = "mlx-cpu-kernels"  # under ~/.cache/embed: one folder per target, each with its g++ wrapper
_build_lock = threading.Lock()
_env_lock = threading.RLock()


def native_kernels() -> bool:
    """True once fused CPU kernels build with FLAGS; False (nothing changed) where they cannot."""
    return native_cache() is not None


@functools.cache
def native_cache() -> Path | None:
    """The private kernel cache, once MLX builds a fused CPU kernel there with FLAGS; None where it cannot."""
    compiler = _real_compiler()
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
        warnings.warn(f"embedder.native.build: cannot write {wrapper} ({err}); stock kernels", RuntimeWarning, stacklevel=2)
        return None
    try:
        with _wrapper_first(cache):
            mx.eval(mx.compile(lambda a: mx.exp(a) * 2.0 + 1.0)(mx.zeros(8)))
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"embedder.native.build: native kernels do not build ({err}); stock kernels",
                      RuntimeWarning, stacklevel=2)
        return None
    return cache


@contextlib.contextmanager
def native_build_env():
    """MLX kernels first built inside this block are built with FLAGS into the private cache (and stay loaded for
    the process); PATH and TMPDIR are restored on exit. Where native kernels are off, it changes nothing."""
    cache = native_cache()
    if cache is None:
        yield
        return
    with _wrapper_first(cache):
        yield


@contextlib.contextmanager
def _wrapper_first(cache: Path):
    with _env_lock:  # one block at a time: the environment is the process's
        saved = {k: os.environ.get(k) for k in ("PATH", "TMPDIR")}
        tempfile.gettempdir()  # fix Python's temp directory before TMPDIR changes
        os.environ["PATH"] = f"{cache / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ["TMPDIR"] = str(cache)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _real_compiler() -> str | None:
    """g++ on PATH, never one of our wrappers (a PATH inherited from a process inside `native_build_env`)."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if CACHE_FOLDER not in Path(d).parts]
    return shutil.which("g++", path=os.pathsep.join(dirs))


def native_library(name: str) -> ctypes.CDLL | None:
    """`csrc/<name>.cpp` built for this CPU (once per machine, cached by content) and loaded; None where
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
        warnings.warn(f"embedder.native.build: {source.name} does not build ({detail}); MLX's kernels instead",
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
    return base / "embed" / CACHE_FOLDER / key


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
