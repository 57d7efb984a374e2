"""Engine "cupy": the CUDA C kernels of scan_common.cu / scan_kernels.cu, compiled by CuPy (NVRTC).

One `cupy.RawModule` per (device, cell, dtype) holding a scan instance per steps-per-thread N the plan
can pick, compiled on first use and cached (CuPy also keeps
the compiled cubin in its on-disk cache, so a new process skips NVRTC). Launches go to the current
CuPy stream and nothing here synchronises with the host: outputs are allocated from CuPy's
stream-ordered pool, and the LRU dlam reduction is a CuPy reduction on the same stream.

float16 storage is supported with float32 accumulation (half_t in the CUDA source); complex64 /
complex128 serve the LRU. The launch plan (block shape, segments, global chunks) is chosen by shape
in `mincore.kernels.gpu_common.plan`; `set_plan_override` forces one (tests, benchmarks).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import gpu_common
from .gpu_common import CELLS, MODE_APPLY, MODE_FULL, MODE_TOTALS

DTYPES = ("float16", "float32", "float64")

_DIR = Path(__file__).resolve().parent
SOURCES = ("scan_common.cu", "scan_kernels.cu")  # concatenated in this order
_CTYPE = {"float16": ("half_t", "float"), "float32": ("float", "float"), "float64": ("double", "double"),
          "complex64": ("cplx<float>", "cplx<float>"), "complex128": ("cplx<double>", "cplx<double>")}
_override: dict = {}


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


def set_plan_override(**kw) -> None:
    """Force plan fields (dpb, nseg, C) for every later launch; no arguments clears the override."""
    _override.clear()
    _override.update(kw)


def launch(cell, xs, ys, h0, s0, yfin, part, shape, rev, flags):
    """Run one cell on CuPy arrays on the current device and stream (see gpu_common.make_api)."""
    import cupy

    dev = cupy.cuda.Device().id
    run_cell(cell, xs, ys, h0, s0, yfin, part, shape, rev, flags, xp=cupy, n_sm=_n_sm(dev),
             kernels=lambda c, dt, n: _kernels(dev, c, dt, n))


def run_cell(cell, xs, ys, h0, s0, yfin, part, shape, rev, flags, *, xp, n_sm, kernels):
    """The launch sequence, independent of where the kernels come from: `kernels(cell, dtype_name, N)`
    returns (scan, carry) callables with CuPy's RawKernel signature k(grid, block, args, shared_mem=)
    (the host emulation in tests/cuda_emulation.py passes NumPy arrays and its own callables)."""
    B, T, D = shape
    dtype = ys[0].dtype
    acc = gpu_common.acc_dtype(dtype)
    p = gpu_common.cell_plan(cell, shape, dtype, n_sm, **_override)
    scan_k, carry_k = kernels(cell, dtype.name, p.N)
    dummy_v = xp.empty(1, dtype=acc)
    x = list(xs) + [xs[0]] * (5 - len(xs))
    y = list(ys) + [ys[0]] * (3 - len(ys))
    if part is not None:
        part.append(xp.empty((B, p.C, p.nseg, D), dtype=acc))
    pv = part[0] if part is not None else dummy_v
    cA, cB = ((xp.empty((B, p.C, D), dtype=acc), xp.empty((B, p.C, D), dtype=acc)) if p.C > 1
              else (dummy_v, dummy_v))
    fin = yfin if yfin is not None else s0
    grid, block, smem = p.grid(B, D), p.block(), p.shared_bytes(acc.itemsize)
    if (smem > 48 * 1024 or p.dpb * p.nseg > 256 or p.nseg > 32 or p.nseg & (p.nseg - 1)
            or (p.nseg > 1 and p.dpb * p.nseg % 32)):
        raise ValueError(f"cupy engine: unusable plan {p} ({smem} B shared; blocks hold at most 256 "
                         "threads, nseg a power of two <= 32, whole warps when nseg > 1)")

    def run(mode, want_fin):
        ints = (B, T, D, p.L, int(rev), mode, flags, int(want_fin))
        scan_k(grid, block, (*x, h0, s0, *y, fin, pv, cA, cB, *(np.int32(i) for i in ints)),
               shared_mem=smem)

    if p.C == 1:
        run(MODE_FULL, yfin is not None)
        return
    run(MODE_TOTALS, False)
    carry_k(((B * D + 255) // 256,), (256,), (cA, cB, s0, np.int32(B), np.int32(p.C), np.int32(D)))
    run(MODE_APPLY, yfin is not None)


def _xp_of(x):
    import cupy

    return cupy.get_array_module(x)


_api = gpu_common.make_api(launch, _xp_of)
scan, scan_backward = _api["scan"], _api["scan_backward"]
min_gru, min_gru_backward = _api["min_gru"], _api["min_gru_backward"]
min_lstm, min_lstm_backward = _api["min_lstm"], _api["min_lstm_backward"]
lru_scan, lru_scan_backward = _api["lru_scan"], _api["lru_scan_backward"]
