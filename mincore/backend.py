"""Array modules and the engine table.

`get_array_module(x)` returns numpy or cupy without importing cupy unless a CuPy array is present,
so `import mincore` stays fast on machines without a GPU. The engine table is the one place where
the backend branches: every public function in `mincore.cells` asks `get_engine` for an
implementation module and calls the same-named function on it.

An engine implementation is a module exposing (all arrays already validated, C-contiguous, h0 given):
    scan(a, b, h0, reverse) -> h
    scan_backward(a, h, dh, h0) -> (da, db, dh0)
    min_gru(k, v, h0, log_space) -> h
    min_gru_backward(k, v, h, dh, h0, log_space) -> (dk, dv, dh0)
    min_lstm(kf, ki, v, h0, normalize, log_space) -> h
    min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space) -> (dkf, dki, dv, dh0)
    lru_scan(lam, bu, h0) -> h
    lru_scan_backward(lam, h, dh, h0) -> (dlam, dbu, dh0)
and a tuple DTYPES of the real dtypes it accepts (complex support follows the real precision).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["get_array_module", "is_cupy_array", "EngineSpec", "register_engine", "engines",
           "get_engine", "resolve_engine", "engine_names", "engine_arrays", "engine_array_module", "cpu_count",
           "keep_freed_memory"]


def is_cupy_array(x) -> bool:
    """True for a cupy.ndarray, decided by type name so cupy is never imported needlessly."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays):
    """numpy, or cupy when any argument is a CuPy array (CuPy's own `get_array_module` contract)."""
    for x in arrays:
        if is_cupy_array(x):
            import cupy

            return cupy
    return np


# --------------------------------------------------------------------------------------------
# probes: each returns None when the engine can run here, else a one-line reason


def _probe_always() -> str | None:
    return None


@functools.cache
def _probe_numba() -> str | None:
    try:
        import numba  # noqa: F401
    except Exception as e:  # pragma: no cover - numba is a hard dependency
        return f"numba cannot be imported ({type(e).__name__}: {e})"
    return None


@functools.cache
def _probe_cupy() -> str | None:
    try:
        import cupy
    except Exception as e:
        return f"CuPy is not installed (pip install 'mincore[cuda12]' or 'mincore[cuda13]'): {e}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no CUDA device (CuPy: {type(e).__name__}: {e})"
    if n < 1:
        return "no CUDA device (CuPy sees 0 devices)"
    try:  # NVRTC must work too: compile and launch the smallest kernel
        k = cupy.RawKernel(r'extern "C" __global__ void one(float* x){ x[0] = 1.0f; }', "one")
        x = cupy.zeros(1, dtype=cupy.float32)
        k((1,), (1,), (x,))
        if float(x[0]) != 1.0:
            return "CUDA device present but a test kernel produced a wrong result"
    except Exception as e:
        return f"CUDA device present but NVRTC compile/launch failed ({type(e).__name__}: {e})"
    return None


@functools.cache
def _probe_numba_cuda() -> str | None:
    try:
        from numba import config, cuda
    except Exception as e:
        return f"numba.cuda cannot be imported ({type(e).__name__}: {e}); install numba-cuda"
    if config.ENABLE_CUDASIM:
        return None  # the simulator runs on NumPy arrays (slow: tiny shapes only)
    try:
        if not cuda.is_available():
            return "no CUDA device (numba.cuda.is_available() is False)"
    except Exception as e:
        return f"no CUDA device ({type(e).__name__}: {e})"
    try:  # the device is there: numba-cuda must also compile (a numba-cuda older than the installed
        # NumPy fails here, e.g. numba-cuda 0.30 with NumPy 2.5: "no attribute 'row_stack'")
        @cuda.jit
        def one(x):
            x[0] = 1.0

        x = cuda.to_device(np.zeros(1, dtype=np.float32))
        one[1, 1](x)
        if x.copy_to_host()[0] != 1.0:
            return "CUDA device present but a numba-cuda test kernel produced a wrong result"
    except Exception as e:
        return (f"CUDA device present but numba-cuda cannot compile/launch a kernel ({type(e).__name__}: {e}); "
                f"numba-cuda {_version('numba-cuda')} with NumPy {np.__version__}: try another numba-cuda")
    return None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def cudasim_enabled() -> bool:
    """True when numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1 before numba was imported)."""
    if "numba" in sys.modules:
        from numba import config

        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


# --------------------------------------------------------------------------------------------
# the engine table


@dataclass(frozen=True)
class EngineSpec:
    name: str
    module: str  # import path of the implementation module (imported lazily)
    arrays: tuple[str, ...]  # array modules it accepts: "numpy", "cupy"
    probe: Callable[[], str | None]
    doc: str

    def accepts(self, xp_name: str) -> bool:
        if self.name == "numba-cuda" and xp_name == "numpy":
            return cudasim_enabled()
        return xp_name in self.arrays


_ENGINES: dict[str, EngineSpec] = {}
_DEFAULT = {"numpy": "numba", "cupy": "cupy"}


def register_engine(spec: EngineSpec) -> None:
    """Add an engine. Engine-parametrised tests pick it up from `engine_names()` automatically."""
    _ENGINES[spec.name] = spec


register_engine(EngineSpec("numpy", "mincore.kernels.reference", ("numpy",), _probe_always,
                           "sequential loop over T; the oracle"))
register_engine(EngineSpec("logspace", "mincore.kernels.logspace", ("numpy", "cupy"), _probe_always,
                           "Heinsen's cumsum + logcumsumexp scan (the paper's listing); a must be > 0"))
register_engine(EngineSpec("numba", "mincore.kernels.numba_cpu", ("numpy",), _probe_numba,
                           "fused CPU kernels, parallel over batch x channel blocks; CPU default"))
register_engine(EngineSpec("numba-cuda", "mincore.kernels.numba_cuda", ("cupy",), _probe_numba_cuda,
                           "numba.cuda kernels on CuPy arrays (NumPy arrays under the simulator)"))
register_engine(EngineSpec("cupy", "mincore.kernels.cupy_engine", ("cupy",), _probe_cupy,
                           "CUDA C RawKernels compiled by CuPy; GPU default"))


def engine_names() -> list[str]:
    return list(_ENGINES)


def engines() -> dict[str, dict]:
    """engine name -> {"available": bool, "reason": None or why not, "arrays": ..., "doc": ...}."""
    out = {}
    for name, spec in _ENGINES.items():
        reason = spec.probe()
        out[name] = {"available": reason is None, "reason": reason, "arrays": list(spec.arrays),
                     "doc": spec.doc}
    return out


@functools.cache
def _load(name: str):
    return importlib.import_module(_ENGINES[name].module)


def resolve_engine(engine: str | None, xp) -> str:
    """The engine name for arrays of module `xp`: explicit > $MINCORE_ENGINE > default by array type."""
    xp_name = xp.__name__.split(".")[0]
    if engine is None:
        engine = os.environ.get("MINCORE_ENGINE") or _DEFAULT.get(xp_name)
        where = "$MINCORE_ENGINE" if os.environ.get("MINCORE_ENGINE") else "default"
    else:
        where = "engine"
    if not isinstance(engine, str) or engine not in _ENGINES:
        raise ValueError(f"{where}: unknown engine {engine!r}; expected one of {engine_names()}")
    spec = _ENGINES[engine]
    if not spec.accepts(xp_name):
        hint = ("move them with cupy.asarray(x)" if xp_name == "numpy"
                else "move them with cupy.asnumpy(x) or x.get()")
        raise TypeError(f"{where}: engine {engine!r} takes {' or '.join(spec.arrays)} arrays but got "
                        f"{xp_name} arrays; {hint}, or pick an engine for {xp_name} arrays")
    reason = spec.probe()
    if reason is not None:
        raise RuntimeError(f"{where}: engine {engine!r} cannot run here: {reason}")
    return engine


def engine_arrays(engine: str | None) -> str:
    """The name of the array module `engine` runs on: the first of its spec's `arrays` ("numpy" or
    "cupy"). None means the engine that resolve_engine picks for NumPy arrays: $MINCORE_ENGINE when
    set, else the CPU default (so "numpy" unless $MINCORE_ENGINE names a GPU engine)."""
    where = "engine"
    if engine is None:
        engine, where = os.environ.get("MINCORE_ENGINE") or _DEFAULT["numpy"], "$MINCORE_ENGINE"
    if not isinstance(engine, str) or engine not in _ENGINES:
        raise ValueError(f"{where}: unknown engine {engine!r}; expected one of {engine_names()}")
    return _ENGINES[engine].arrays[0]


def engine_array_module(engine: str | None):
    """numpy or cupy: the module whose arrays `engine` takes (see engine_arrays). The one place code
    above the kernels decides where a model and its data live (cupy is imported only when asked for)."""
    return importlib.import_module(engine_arrays(engine))


def get_engine(engine: str | None, xp):
    """(name, implementation module) for `engine` on arrays of module `xp`; never falls back silently."""
    name = resolve_engine(engine, xp)
    return name, _load(name)


# ------------------------------------------------------------------------------ the machine and the process
def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under taskset or a
    container's CPU set), else every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_cpus(cpus: int | None = None, load: float | None = None) -> int:
    """CPUs of `cpus` (default: cpu_count()) that other work leaves free, judged by the 1-minute load
    average (`load`, default os.getloadavg()'s; where the OS has none, every CPU is free); at least 1.
    Why it matters: a step split over every core waits for its slowest thread, so a core shared with
    another busy process slows the whole step several times (numba's and BLAS's threads both)."""
    cpus = cpu_count() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return cpus
    return max(1, min(cpus, cpus - int(load)))  # a core counts as busy once a whole process's load sits on it


@contextlib.contextmanager
def cpu_threads(n: int | None, torch=None):
    """Limit BLAS (threadpoolctl), numba's parallel kernels and, given its module, torch to n threads
    for the block, at most the CPUs this process may use (more threads than CPUs only add switching);
    None leaves them as they are. On a busy machine every extra thread waits for a core at each
    hand-off (free_cpus)."""
    if n is None:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits

    n = min(n, cpu_count())
    old = numba.get_num_threads(), torch.get_num_threads() if torch is not None else None
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(old[0])
        if torch is not None:
            torch.set_num_threads(old[1])


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest: arrays up to 32 MiB are recycled from the heap


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the OS.

    Why: a training step allocates and frees the same few-MiB activation arrays every step. By default
    glibc serves them from mmap or trims them off the heap when freed, so every step writes to fresh
    pages (page faults, and the kernel zeroing each page). Measured on 20 Shakespeare default-preset
    steps plus one evaluation, one thread: ~250,000-320,000 page faults without, ~59,000 with, and
    steps 3-6% faster in alternating runs (docs/SHAKESPEARE.md). Arrays above MMAP_THRESHOLD still
    come from mmap. Called by `mincore train` and `mincore eval`; a library user can call it too. The
    cost: the process keeps its peak heap. Returns False where malloc is not glibc's.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        return False
    return bool(ok)
