"""Engine "numba": fused CPU kernels, the CPU default.

Layout (B, T, D), D contiguous. Work is split into jobs = (batch row i, channel block) run in
parallel (prange); each job loops over T and, inside, over its channel block, so the innermost loop
is contiguous and vectorises (the gate math uses numba_math's vectorisable exp). A prange over
flattened channels with a strided T loop is ~14x slower (docs/ARCHITECTURE.md, The numba CPU
kernels). Job layout and flat unsigned row addressing are shared with numba_scan (see its docstring
for why and the measurements).

Flags (log_space, normalize) are compile-time constants: `_gru_kernels(log_space)` and
`_lstm_kernels(normalize, log_space)` build one kernel pair per combination (closures over the flags,
cached by numba like any function), so each kernel has two call sites of its row helper, LLVM inlines
both and folds the flags away, and the row loop vectorises. Measured alternatives that did not: a
runtime flag inside the loop (both branches computed per element), numba-IR inlining of the rows
(`inline="always"`: the loop stopped vectorising), four call sites per kernel (no longer inlined).

Traffic per element (the minimum, and what these kernels move): min_gru forward reads k, v and
writes h (3 values); backward reads k, v, h_{t-1}, dh and writes dk, dv (6 values). The gates are
recomputed in the backward instead of stored: an exp is cheaper than a memory round trip.

The backward is the forward scan reversed with gates shifted by one (Martin & Cundy 2018, sec 2.2):
G_t = dh_t + a_{t+1} G_{t+1}, carried in a register-resident block while t runs T-1 .. 0.

Backward order: t runs down, and so do the channels inside each row, so every one of the six streams
walks memory strictly downwards (the hardware prefetchers follow a monotone stream; rows visited
downwards but read upwards inside are not one). Measured at (64, 4096, 256) float32, 2 threads, same
run, kernel alone: 128-136 ms against 139-154 ms with ascending channels (7-10%); equal in cache. A
software prefetch of the rows below (1-16 rows ahead, into L1 or L2, row by row or in bursts of
4-16 rows) lost 5-50% on top of this; the same access pattern with no gate math at all (4 reads, 2
streamed writes per element; `mincore bench kernels --pattern`) runs at 0.70-0.79 of the streamed copy
across runs, and the minGRU backward at 0.85-0.89 of that.

Forward prefetch: the forward reads its rows upwards, and while the gate math runs the hardware
prefetchers fall behind: at (64, 4096, 256) float32 on two threads, time was the gate math plus the
memory time (minGRU 0.51 ns per element, where the same reads and writes without the math take 0.29).
Prefetching every line of the input rows AHEAD = 2 steps up (llvm.prefetch) gives 0.34-0.38
(1-3 rows ahead within 5% of each other).

Row functions that carry gate math call `wide_vectors()` (numba_simd: 512-bit vectors on AVX-512
CPUs, fewer instructions for the exps), except the minGRU backward, which is bound by its memory
pattern and measured no faster; each row buffer starts on a cache line (`line_buffer`), without
which the 512-bit stores into it and store_row's line loads from it straddle lines (the log-space
minGRU forward ran 2x slower with streamed outputs).
"""

from __future__ import annotations

import functools

from numba import njit, prange

from . import buffers
from .numba_fpenv import denormals_off, denormals_restore
from .numba_fpenv import flush_if_soft as ftz
from .numba_math import fast_dg, fast_g, fast_lstm_gates, fast_sigmoid_pair
from .numba_scan import AHEAD, U, block, job_range, lru_scan, lru_scan_backward, n_jobs, scan, scan_backward  # noqa: F401 (engine API)
from .numba_scan import JIT as _JIT
from .numba_scan import ROW as _ROW
from .numba_simd import fence, line_buffer, line_copy, line_zeros, prefetch_row, store_row, streams, wide_vectors
from .numba_threads import serialized

DTYPES = ("float32", "float64")
# the functions that write into preallocated outputs (mincore.cells: out=) instead of allocating
OUT = frozenset({"scan", "scan_backward", "min_gru", "min_gru_backward", "min_lstm", "min_lstm_backward",
                 "lru_scan", "lru_scan_backward"})


# ------------------------------------------------------------------------------------- minGRU
# Rows are computed into small per-job buffers (the forward's state s: h_{t-1} in, h_t out; the
# backward's rows of gradients) and written out by numba_simd.store_row, non-temporally for large
# outputs (numba_simd's docstring); the state is never read back from h.


@njit(**_ROW)
def _gru_fwd_row(k, v, s, o, n, log_space):
    wide_vectors()
    for j in range(n):
        u = o + U(j)
        z, a = fast_sigmoid_pair(k[u])  # a = 1 - z, without cancellation
        x = fast_g(v[u]) if log_space else v[u]
        s[j] = a * s[j] + z * x  # not h + z (h~ - h): that is inf - inf = NaN once h is infinite


@njit(**_ROW)
def _gru_bwd_row(k, v, hp, dh, gk, gv, carry, o, p, n, one, log_space):
    for jj in range(n):
        j = n - 1 - jj  # descending, as t is: see "Backward order" above
        u, w = o + U(j), p + U(j)
        z, a = fast_sigmoid_pair(k[u])  # a = 1 - z, without cancellation
        g = dh[u] + carry[j]  # G_t = dh_t + a_{t+1} G_{t+1}
        if log_space:
            x, dx = fast_g(v[u]), fast_dg(v[u])
        else:
            x, dx = v[u], one
        gk[j] = ftz(g * (x - hp[w]) * z * a)  # a = 1 - z, b = z h~: dk = G (h~ - h_{t-1}) z'
        gv[j] = ftz(g * z * dx)
        carry[j] = ftz(a * g)  # subnormals flushed: see numba_fpenv


@functools.cache
def _gru_kernels(log_space: bool):
    @njit(**_JIT)
    def fwd(k, v, h0, h, stream, blk, jobs):
        B, T, D = k.shape
        k, v, h, h0 = k.reshape(-1), v.reshape(-1), h.reshape(-1), h0.reshape(-1)
        for job in prange(jobs):
            i, d0, n = job_range(job, D, blk)
            s = line_copy(h0[i * D + d0:i * D + d0 + n])
            for t in range(T):
                o = U((i * T + t) * D + d0)
                if t + AHEAD < T:  # see "Forward prefetch" above
                    prefetch_row(k, o + U(AHEAD * D), n)
                    prefetch_row(v, o + U(AHEAD * D), n)
                _gru_fwd_row(k, v, s, o, n, log_space)
                store_row(h, o, s, n, stream)
            fence()

    @njit(**_JIT)
    def bwd(k, v, h, dh, h0, dk, dv, dh0, one, stream, blk, jobs):
        B, T, D = k.shape
        k, v, h, dh, h0 = k.reshape(-1), v.reshape(-1), h.reshape(-1), dh.reshape(-1), h0.reshape(-1)
        dk, dv, dh0 = dk.reshape(-1), dv.reshape(-1), dh0.reshape(-1)
        for job in prange(jobs):
            fpenv = denormals_off()  # subnormals flushed by the hardware (numba_fpenv), this job only
            i, d0, n = job_range(job, D, blk)
            carry = line_zeros(n, h0.dtype)  # a_{t+1} G_{t+1}, zero past the end
            gk, gv = line_buffer(n, h0.dtype), line_buffer(n, h0.dtype)  # one row of dk, dv
            for t in range(T - 1, -1, -1):
                o = U((i * T + t) * D + d0)
                if t > 0:
                    _gru_bwd_row(k, v, h, dh, gk, gv, carry, o, o - U(D), n, one, log_space)
                else:  # t = 0 reads h0
                    _gru_bwd_row(k, v, h0, dh, gk, gv, carry, o, U(i * D + d0), n, one, log_space)
                store_row(dk, o, gk, n, stream)
                store_row(dv, o, gv, n, stream)
            dh0[i * D + d0:i * D + d0 + n] = carry
            fence()
            denormals_restore(fpenv)

    return fwd, bwd


@serialized
def min_gru(k, v, h0, log_space, out=None):
    """`out`: a preallocated h (lets benchmarks and loops skip the allocation)."""
    B, _, D = k.shape
    h, blk = buffers.empty_like(k) if out is None else out, block(B, D)
    _gru_kernels(log_space)[0](k, v, h0, h, streams(h), blk, n_jobs(B, D, blk))
    return h


@serialized
def min_gru_backward(k, v, h, dh, h0, log_space, out=None):
    """`out`: preallocated (dk, dv, dh0)."""
    B, _, D = k.shape
    dk, dv, dh0 = (buffers.empty_like(k), buffers.empty_like(v), buffers.empty_like(h0)) if out is None else out
    blk = block(B, D)
    _gru_kernels(log_space)[1](k, v, h, dh, h0, dk, dv, dh0, k.dtype.type(1), streams(dk, dv), blk,
                               n_jobs(B, D, blk))
    return dk, dv, dh0


# ------------------------------------------------------------------------------------ minLSTM
# normalize: f' = f / (f + i), i' = i / (f + i) from two exps and one division
# (numba_math.fast_lstm_gates: exact for saturated gates, with the backward's products).


@njit(**_ROW)
def _lstm_fwd_row(kf, ki, v, s, o, n, one, normalize, log_space):
    wide_vectors()
    for j in range(n):
        u = o + U(j)
        if normalize:
            f, i, _, _ = fast_lstm_gates(kf[u], ki[u])
        else:
            f, i = fast_sigmoid_pair(kf[u])[0], fast_sigmoid_pair(ki[u])[0]
        x = fast_g(v[u]) if log_space else v[u]
        s[j] = f * s[j] + i * x


@njit(**_ROW)
def _lstm_bwd_row(kf, ki, v, hp, dh, gf, gi, gv, carry, o, p, n, one, normalize, log_space):
    wide_vectors()
    for jj in range(n):
        j = n - 1 - jj  # descending, as t is: see "Backward order" above
        u, w = o + U(j), p + U(j)
        g = dh[u] + carry[j]
        if log_space:
            x, dx = fast_g(v[u]), fast_dg(v[u])
        else:
            x, dx = v[u], one
        if normalize:
            fp, ip, cf_ip, ci_fp = fast_lstm_gates(kf[u], ki[u])  # (1 - f) i', (1 - i) f'
            gx = g * (x - hp[w])
            gf[j] = ftz(-cf_ip * fp * gx)  # d h/d kf = (1 - f) f' i' (h_{t-1} - h~)
            gi[j] = ftz(ci_fp * ip * gx)
            gv[j] = ftz(g * ip * dx)
            carry[j] = ftz(fp * g)
        else:
            f, cf = fast_sigmoid_pair(kf[u])  # cf = 1 - f, ci = 1 - i without cancellation
            i, ci = fast_sigmoid_pair(ki[u])
            gf[j] = ftz(g * hp[w] * f * cf)
            gi[j] = ftz(g * x * i * ci)
            gv[j] = ftz(g * i * dx)
            carry[j] = ftz(f * g)


@functools.cache
def _lstm_kernels(normalize: bool, log_space: bool):
    @njit(**_JIT)
    def fwd(kf, ki, v, h0, h, one, stream, blk, jobs):
        B, T, D = v.shape
        kf, ki, v, h, h0 = kf.reshape(-1), ki.reshape(-1), v.reshape(-1), h.reshape(-1), h0.reshape(-1)
        for job in prange(jobs):
            i, d0, n = job_range(job, D, blk)
            s = line_copy(h0[i * D + d0:i * D + d0 + n])
            for t in range(T):
                o = U((i * T + t) * D + d0)
                if t + AHEAD < T:  # see "Forward prefetch" above
                    prefetch_row(kf, o + U(AHEAD * D), n)
                    prefetch_row(ki, o + U(AHEAD * D), n)
                    prefetch_row(v, o + U(AHEAD * D), n)
                _lstm_fwd_row(kf, ki, v, s, o, n, one, normalize, log_space)
                store_row(h, o, s, n, stream)
            fence()

    @njit(**_JIT)
    def bwd(kf, ki, v, h, dh, h0, dkf, dki, dv, dh0, one, stream, blk, jobs):
        B, T, D = v.shape
        kf, ki, v, h, dh = kf.reshape(-1), ki.reshape(-1), v.reshape(-1), h.reshape(-1), dh.reshape(-1)
        dkf, dki, dv, h0, dh0 = dkf.reshape(-1), dki.reshape(-1), dv.reshape(-1), h0.reshape(-1), dh0.reshape(-1)
        for job in prange(jobs):
            fpenv = denormals_off()  # subnormals flushed by the hardware (numba_fpenv), this job only
            i, d0, n = job_range(job, D, blk)
            carry = line_zeros(n, h0.dtype)
            gf, gi, gv = line_buffer(n, h0.dtype), line_buffer(n, h0.dtype), line_buffer(n, h0.dtype)
            for t in range(T - 1, -1, -1):
                o = U((i * T + t) * D + d0)
                if t > 0:
                    _lstm_bwd_row(kf, ki, v, h, dh, gf, gi, gv, carry, o, o - U(D), n, one, normalize, log_space)
                else:  # t = 0 reads h0
                    _lstm_bwd_row(kf, ki, v, h0, dh, gf, gi, gv, carry, o, U(i * D + d0), n, one, normalize,
                                  log_space)
                store_row(dkf, o, gf, n, stream)
                store_row(dki, o, gi, n, stream)
                store_row(dv, o, gv, n, stream)
            dh0[i * D + d0:i * D + d0 + n] = carry
            fence()
            denormals_restore(fpenv)

    return fwd, bwd


@serialized
def min_lstm(kf, ki, v, h0, normalize, log_space, out=None):
    B, _, D = v.shape
    h, blk = buffers.empty_like(v) if out is None else out, block(B, D)
    _lstm_kernels(normalize, log_space)[0](kf, ki, v, h0, h, v.dtype.type(1), streams(h), blk, n_jobs(B, D, blk))
    return h


@serialized
def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space, out=None):
    B, _, D = v.shape
    if out is None:
        out = buffers.empty_like(kf), buffers.empty_like(ki), buffers.empty_like(v), buffers.empty_like(h0)
    dkf, dki, dv, dh0 = out
    blk = block(B, D)
    _lstm_kernels(normalize, log_space)[1](kf, ki, v, h, dh, h0, dkf, dki, dv, dh0, v.dtype.type(1),
                                           streams(dkf, dki, dv), blk, n_jobs(B, D, blk))
    return dkf, dki, dv, dh0
