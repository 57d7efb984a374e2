"""Engine "numba-cuda": the algorithm of scan_kernels.cu written with numba.cuda.

Same plan (mincore.kernels.gpu_common.plan), same tiles of dpb channels x nseg segments, same
(a, b) per cell. Two deliberate differences from the CUDA C, both for simplicity (this engine is the
cross-check of "cupy", not the fast path): the carry scan over segments is a serial loop by one
thread per channel (the simulator has no warp shuffles), and the apply pass reloads its inputs
(an L1/L2 hit) instead of keeping them in registers.

Arrays: CuPy arrays through __cuda_array_interface__ (wrapped with sync=False and launched on the
current CuPy stream: no host synchronisation), or NumPy arrays under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1 set before numba is imported; numba's bundled numba.cuda is enough for it).
Results come back as arrays of the input's module.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from numba import config, cuda

from ..backend import get_array_module
from . import gpu_common
from .gpu_common import MODE_APPLY, MODE_FULL, MODE_TOTALS
from .numba_cuda_cells import lru_cells, real_cells

DTYPES = ("float32", "float64")
MAXS, MAXW = 32, 33  # static shared tiles: nseg <= 32 segments x (dpb <= 32) + 1 channels


def _max_segments(itemsize: int) -> int:
    """Static shared memory is capped at 48 KB: 2 arrays x 2 buffers x nseg x 33 values fit for
    nseg = 32 up to 8-byte values (34 KB); complex128 gets 16 segments."""
    return MAXS if itemsize <= 8 else MAXS // 2
_override: dict = {}


def set_plan_override(**kw) -> None:
    """Force plan fields (dpb, nseg, C) for every later launch; no arguments clears the override."""
    _override.clear()
    _override.update(kw)


@functools.cache
def _kernels(cell: str, vname: str):
    """(scan kernel, carry kernel) for one cell and accumulation dtype (see scan_kernels.cu)."""
    vdt = np.dtype(vname).type
    maxs = _max_segments(np.dtype(vname).itemsize)
    coef, emit = (lru_cells(vdt) if cell.startswith("Lru") else real_cells(vdt))[cell]
    one, zero = vdt(1), vdt(0)
    has_part = cell == "LruBwd"

    @cuda.jit
    def scan_k(x0, x1, x2, x3, x4, h0, s0, y0, y1, y2, yfin, part, cA, cB,
               B, T, D, L, N, rev, mode, flags, fin):
        dpb, nseg = cuda.blockDim.x, cuda.blockDim.y
        dl, seg = cuda.threadIdx.x, cuda.threadIdx.y
        nd = (D + dpb - 1) // dpb
        b, d = cuda.blockIdx.x // nd, (cuda.blockIdx.x % nd) * dpb + dl
        c, C = cuda.blockIdx.z, cuda.gridDim.z
        live = d < D
        hb, cb = b * D + d, (b * C + c) * D + d
        u_begin = c * L
        u_end = u_begin + L if u_begin + L < T else T  # not min(): its vararg overload fails in CUDA
        shA = cuda.shared.array((2, maxs, MAXW), vdt)  # double-buffered by tile parity
        shB = cuda.shared.array((2, maxs, MAXW), vdt)
        carS = cuda.shared.array(MAXW, vdt)
        carP = cuda.shared.array(MAXW, vdt)
        s, P, acc = zero, one, zero
        if live and mode == MODE_FULL:
            s = vdt(s0[hb])
        if live and mode == MODE_APPLY:
            s = cB[cb]
        if nseg > 1:
            if seg == 0:
                carS[dl] = s
                carP[dl] = P
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
                shA[buf, seg, dl] = A
                shB[buf, seg, dl] = Bc
                cuda.syncthreads()
                if seg == 0:
                    cs, cp = carS[dl], carP[dl]
                    for q in range(nseg):
                        qa, qb = shA[buf, q, dl], shB[buf, q, dl]
                        shA[buf, q, dl] = cp
                        shB[buf, q, dl] = cs
                        cs = qa * cs + qb
                        cp = qa * cp
                    carS[dl] = cs
                    carP[dl] = cp
                cuda.syncthreads()
                s_in = shB[buf, seg, dl]
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
            s, P = carS[dl], carP[dl]
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
    channel, nothing segmented; tests force the other paths with set_plan_override)."""
    if config.ENABLE_CUDASIM:
        return 0
    return cuda.get_current_device().MULTIPROCESSOR_COUNT


def launch(cell, xs, ys, h0, s0, yfin, part, shape, rev, flags):
    B, T, D = shape
    xp = get_array_module(ys[0])
    acc = gpu_common.acc_dtype(ys[0].dtype)
    p = gpu_common.cell_plan(cell, shape, ys[0].dtype, _n_sm(), **_override)
    if p.nseg > _max_segments(acc.itemsize):  # correct for any nseg: the last tile may be partial
        p = dataclasses.replace(p, nseg=_max_segments(acc.itemsize))
    if p.nseg > 1 and p.dpb > MAXW - 1 and "dpb" not in _override:  # the shared tiles' width
        p = dataclasses.replace(p, dpb=MAXW - 1)
    if p.nseg > 1 and p.dpb > MAXW - 1:
        raise ValueError(f"numba-cuda: at most {MAXW - 1} channels per block, plan has {p}")
    if xp is np:
        stream, dev = 0, (lambda a: a.reshape(-1))
    else:
        ptr = xp.cuda.get_current_stream().ptr
        stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()  # 0: legacy default

        def dev(a):  # no implicit stream sync: launches are ordered on the current CuPy stream
            a = a.reshape(-1)
            return cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
    dummy = xp.empty(1, dtype=acc)
    if part is not None:
        part.append(xp.empty((B, p.C, p.nseg, D), dtype=acc))
    cA, cB = (xp.empty(B * p.C * D if p.C > 1 else 1, dtype=acc) for _ in range(2))
    x = [dev(a) for a in list(xs) + [xs[0]] * (5 - len(xs))]
    # unused output slots get their own scratch: the simulator copies every argument back after
    # the launch, so an alias of a real output would overwrite it
    y = [dev(a) for a in list(ys) + [xp.empty(1, dtype=ys[0].dtype) for _ in range(3 - len(ys))]]
    h0_, s0_ = dev(h0), dev(s0)
    fin_ = dev(yfin if yfin is not None else xp.empty(1, dtype=ys[0].dtype))
    part_ = dev(part[0] if part is not None else dummy)
    cA_, cB_ = dev(cA), dev(cB)
    scan_k, carry_k = _kernels(cell, acc.name)
    grid, block = p.grid(B, D), p.block()

    def run(mode, want_fin):
        scan_k[grid, block, stream](*x, h0_, s0_, *y, fin_, part_, cA_, cB_, B, T, D, p.L, p.N,
                                    int(rev), mode, flags, int(want_fin))

    if p.C == 1:
        run(MODE_FULL, yfin is not None)
        return
    run(MODE_TOTALS, False)
    carry_k[(B * D + 127) // 128, 128, stream](cA_, cB_, s0_, B, p.C, D)
    run(MODE_APPLY, yfin is not None)


_api = gpu_common.make_api(launch, get_array_module)
scan, scan_backward = _api["scan"], _api["scan_backward"]
min_gru, min_gru_backward = _api["min_gru"], _api["min_gru_backward"]
min_lstm, min_lstm_backward = _api["min_lstm"], _api["min_lstm_backward"]
lru_scan, lru_scan_backward = _api["lru_scan"], _api["lru_scan_backward"]
