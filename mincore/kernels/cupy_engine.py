"""Engine "cupy": the CUDA C kernels of scan_common.cu / scan_kernels.cu, compiled by CuPy (NVRTC).

One `cupy.RawModule` per (device, cell, dtype) holding a scan instance per steps-per-thread N the plan
can pick, compiled on first use and cached (CuPy also keeps
the compiled cubin in its on-disk cache, so a new process skips NVRTC). Launches go to the current
CuPy stream and nothing here synchronises with the host: outputs are allocated from CuPy's
stream-ordered pool, and the LRU dlam reduction is a CuPy reduction on the same stream.

float16 storage is supported with float32 accumulation (half_t in the CUDA source); complex64 /
complex128 serve the LRU. The launch plan (block shape, segments, global chunks) is chosen by shape
in `mincore.kernels.gpu_common.plan`, and the launch sequence is gpu_common's: this module compiles
the kernels and calls them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import gpu_common
from .gpu_common import CELLS

DTYPES = ("float16", "float32", "float64")

_DIR = Path(__file__).resolve().parent
SOURCES = ("scan_common.cu", "scan_kernels.cu")  # concatenated in this order
_CTYPE = {"float16": ("half_t", "float"), "float32": ("float", "float"), "float64": ("double", "double"),
          "complex64": ("cplx<float>", "cplx<float>"), "complex128": ("cplx<double>", "cplx<double>")}


def source() -> str:
    """The single translation unit handed to NVRTC: the .cu files joined, local #include dropped."""
    parts = []
    for name in SOURCES:
        text = (_DIR / name).read_text()
        parts.append("\n".join(line for line in text.splitlines()
                               if not line.startswith(('#include "scan_', "#pragma once"))))
    return "\n".join(parts)


def name_expressions(cell: str, dtype, N: int | None = None) -> tuple[str, str]:
    """(scan kernel, carry kernel) template instances for one cell, storage dtype and steps per thread
    (default: the most the cell takes, gpu_common.steps_per_thread)."""
    S, V = _CTYPE[np.dtype(dtype).name]
    N = N or gpu_common.steps_per_thread(gpu_common.acc_dtype(dtype), cell)
    cell_t = f"{cell}<{S}>" if cell.startswith("Lru") else f"{cell}<{S}, {V}>"
    return f"mc_scan<{cell_t}, {N}>", f"mc_carry<{V}, {S}>"


def _all_for(cell: str, dtype) -> list[str]:
    """Every instance one (cell, dtype) may launch: a scan per N the plan can pick, and the carry."""
    out = []
    for n in gpu_common.steps_options(gpu_common.acc_dtype(dtype), cell):
        out.extend(e for e in name_expressions(cell, dtype, n) if e not in out)
    return out


def all_name_expressions() -> list[str]:
    """Every instance the engine can ask for (the nvcc test instantiates them all)."""
    out = []
    for cell in CELLS:
        for dt in (("complex64", "complex128") if cell.startswith("Lru") else DTYPES):
            out.extend(e for e in _all_for(cell, dt) if e not in out)
    return out


@functools.cache
def _module(device_id: int, cell: str, dtype: str):
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(), name_expressions=_all_for(cell, dtype))


def _kernels(device_id: int, cell: str, dtype: str, N: int):
    mod = _module(device_id, cell, dtype)
    return tuple(mod.get_function(n) for n in name_expressions(cell, dtype, N))


@functools.cache
def _n_sm(device_id: int) -> int:
    import cupy

    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]


def _call(raw):
    """A RawKernel-like k(grid, block, args, shared_mem=) behind gpu_common.Target's calling convention."""
    def call(grid, block, shared_bytes, arrays, ints):
        raw(grid, block, (*arrays, *(np.int32(i) for i in ints)), shared_mem=shared_bytes)
    return call


def target(xp, n_sm: int, raw_kernels) -> gpu_common.Target:
    """A launch target over `raw_kernels(cell, dtype name, N)` -> (scan, carry) RawKernel-likes: CuPy's
    below, or the host emulation's in tests/cuda_emulation.py (NumPy arrays, the same launches)."""
    return gpu_common.Target(xp, n_sm, lambda cell, dt, n: tuple(map(_call, raw_kernels(cell, dt, n))))


@functools.cache
def _device_target(device_id: int) -> gpu_common.Target:
    import cupy

    return target(cupy, _n_sm(device_id), functools.partial(_kernels, device_id))


def _current_target(x) -> gpu_common.Target:
    import cupy

    return _device_target(cupy.cuda.Device().id)


_api = gpu_common.make_api(_current_target)
scan, scan_backward = _api["scan"], _api["scan_backward"]
min_gru, min_gru_backward = _api["min_gru"], _api["min_gru_backward"]
min_lstm, min_lstm_backward = _api["min_lstm"], _api["min_lstm_backward"]
lru_scan, lru_scan_backward = _api["lru_scan"], _api["lru_scan_backward"]
