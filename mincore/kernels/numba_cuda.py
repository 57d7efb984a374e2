"""Engine "numba-cuda": the algorithm of scan_kernels.cu written with numba.cuda.

Same plan, same launch sequence (mincore.kernels.gpu_common), same tiles of dpb channels x nseg
segments in dynamic shared memory laid out as in the CUDA C, same (a, b) per cell, one kernel
instance per steps-per-thread N. Two deliberate differences from the CUDA C, both for simplicity
(this engine is the cross-check of "cupy", not the fast path): the carry scan over segments is a
serial loop by one thread per channel (the simulator has no warp shuffles), and the apply pass
reloads its inputs (an L1/L2 hit) instead of keeping them in registers.

Arrays: CuPy arrays through __cuda_array_interface__ (wrapped with sync=False and launched on the
current CuPy stream: no host synchronisation), or NumPy arrays under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1 set before numba is imported; numba's bundled numba.cuda is enough for it).
Results come back as arrays of the input's module.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import config, cuda, from_dtype

from ..backend import get_array_module
from . import gpu_common
from .gpu_common import MODE_APPLY, MODE_FULL, MODE_TOTALS
from .numba_cuda_cells import lru_cells, real_cells

DTYPES = ("float32", "float64")


@functools.cache
def _kernels(cell: str, vname: str, N: int):
    """(scan kernel, carry kernel) for one cell, accumulation dtype and N steps per thread, with the
    arguments of mc_scan / mc_carry in scan_kernels.cu (arrays flat)."""
    vdt = np.dtype(vname).type
    sh_t = from_dtype(np.dtype(vname))  # a numba type: the simulator's dynamic shared array needs one
    coef, emit = (lru_cells(vdt) if cell.startswith("Lru") else real_cells(vdt))[cell]
    one, zero = vdt(1), vdt(0)
    has_part = gpu_common.CELLS[cell].partials

    @cuda.jit
    def scan_k(x0, x1, x2, x3, x4, h0, s0, y0, y1, y2, yfin, part, cA, cB,
               B, T, D, L, rev, mode, flags, fin):
        dpb, nseg = cuda.blockDim.x, cuda.blockDim.y
        dl, seg = cuda.threadIdx.x, cuda.threadIdx.y
        nd = (D + dpb - 1) // dpb
        b, d = cuda.blockIdx.x // nd, (cuda.blockIdx.x % nd) * dpb + dl
        c, C = cuda.blockIdx.z, cuda.gridDim.z
        live = d < D
        hb, cb = b * D + d, (b * C + c) * D + d
        u_begin = c * L
        u_end = u_begin + L if u_begin + L < T else T  # not min(): its vararg overload fails in CUDA
        # dynamic shared memory (Plan.shared_bytes), as in the CUDA C: shA, shB [2][nseg][W]
        # (double-buffered by tile parity), then carS, carP [dpb]; W = dpb + 1
        sh = cuda.shared.array(0, sh_t)
        W = dpb + 1
        oB = 2 * nseg * W
        oS = 2 * oB
        oP = oS + dpb
        s, P, acc = zero, one, zero
        if live and mode == MODE_FULL:
            s = vdt(s0[hb])
        if live and mode == MODE_APPLY:
            s = cB[cb]
        if nseg > 1:
            if seg == 0:
                sh[oS + dl] = s
                sh[oP + dl] = P
            cuda.syncthreads()
        buf = 0
        for u0 in range(u_begin, u_end, nseg * N):
            A, Bc = one, zero
            for j in range(N):  # 1. totals of this thread's N steps
                u = u0 + seg * N + j
                if live and u < u_end:
                    t = T - 1 - u if rev else u
                    i = (b * T + t) * D + d
                    a, bb = coef(x0, x1, x2, x3, x4, h0, i, i - D if t > 0 else -1, hb, D, flags)
                    Bc = a * Bc + bb
                    A = a * A
            if nseg == 1:
                s_in = s
                s = A * s + Bc
                P = A * P
            else:  # 2. carry scan over the segments (serial, one thread per channel)
                row = buf * nseg * W + dl  # (buf, segment 0, dl)
                sh[row + seg * W] = A
                sh[oB + row + seg * W] = Bc
                cuda.syncthreads()
                if seg == 0:
                    cs, cp = sh[oS + dl], sh[oP + dl]
                    for q in range(nseg):
                        qa, qb = sh[row + q * W], sh[oB + row + q * W]
                        sh[row + q * W] = cp
                        sh[oB + row + q * W] = cs
                        cs = qa * cs + qb
                        cp = qa * cp
                    sh[oS + dl] = cs
                    sh[oP + dl] = cp
                cuda.syncthreads()
                s_in = sh[oB + row + seg * W]
            if mode != MODE_TOTALS:  # 3. apply from the carry-in
                x = s_in
                for j in range(N):
                    u = u0 + seg * N + j
                    if live and u < u_end:
                        t = T - 1 - u if rev else u
                        i = (b * T + t) * D + d
                        x, inc = emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i,
                                      i - D if t > 0 else -1, hb, D, flags, x)
                        acc += inc
                if nseg == 1:
                    s = x
            buf = 1 - buf
        if nseg > 1:
            s, P = sh[oS + dl], sh[oP + dl]
        if live and has_part:
            part[((b * C + c) * nseg + seg) * D + d] = acc
        if live and seg == 0:
            if mode == MODE_TOTALS:
                cA[cb] = P
                cB[cb] = s
            elif fin != 0 and c == C - 1:
                yfin[hb] = s

    @cuda.jit
    def carry_k(cA, cB, s0, B, C, D):
        idx = cuda.grid(1)
        if idx < B * D:
            b, d = idx // D, idx % D
            s = vdt(s0[idx])
            for c in range(C):
                k = (b * C + c) * D + d
                A, Bv = cA[k], cB[k]
                cB[k] = s
                s = A * s + Bv

    return scan_k, carry_k


def _n_sm() -> int:
    """Multiprocessors of the current device; 0 under the simulator (default plan: a thread per
    channel, nothing segmented; tests force the other paths with gpu_common.plan_override)."""
    if config.ENABLE_CUDASIM:
        return 0
    return cuda.get_current_device().MULTIPROCESSOR_COUNT


def _target(x) -> gpu_common.Target:
    """The launch target for arrays like x: the current CuPy stream (NumPy under the simulator)."""
    xp = get_array_module(x)
    if xp is np:
        stream = 0

        def dev(a):
            return a.reshape(-1)
    else:
        ptr = xp.cuda.get_current_stream().ptr
        stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()  # 0: legacy default

        def dev(a):  # no implicit stream sync: launches are ordered on the current CuPy stream
            a = a.reshape(-1)
            return cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)

    def call(kernel):
        def run(grid, block, shared_bytes, arrays, ints):
            kernel[grid, block, stream, shared_bytes](*map(dev, arrays), *ints)
        return run

    def kernels(cell, dtype_name, N):
        acc = gpu_common.acc_dtype(dtype_name).name
        return tuple(map(call, _kernels(cell, acc, N)))

    return gpu_common.Target(xp, _n_sm(), kernels)


_api = gpu_common.make_api(_target)
scan, scan_backward = _api["scan"], _api["scan_backward"]
min_gru, min_gru_backward = _api["min_gru"], _api["min_gru_backward"]
min_lstm, min_lstm_backward = _api["min_lstm"], _api["min_lstm_backward"]
lru_scan, lru_scan_backward = _api["lru_scan"], _api["lru_scan_backward"]
