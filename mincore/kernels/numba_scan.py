"""numba kernels for the plain linear scans, h_t = a_t h_{t-1} + b_t (real, any a) and the LRU's
h_t = lam h_{t-1} + bu_t (complex, lam per channel), plus the job layout shared with numba_cpu.

Job layout: one job per (batch row i, channel block [d0, d0 + n)), run in parallel with prange; a job
loops over T and, inside, over its n contiguous channels, so the innermost loop vectorises.
Addressing: arrays are flattened and rows addressed by unsigned offsets (o = (i T + t) D + d0). Two
costs disappear that way, both measured (tmp microbenchmarks, 2-core Xeon): slicing a view per row
touches the array's reference count atomically (shared between threads: cache-line ping-pong), and
a signed index needs a negative-wraparound select per element. Flat unsigned rows ran the minGRU
forward 1.2x faster in cache and 1.6-1.8x faster at (64, 4096, 256) on two threads.

Traffic: scan forward reads a, b and writes h (3 values per element); backward reads a, h_{t-1},
dh and writes da, db (5). LRU forward reads bu, writes h (2 complex); backward reads h_{t-1}, dh,
writes dbu (3 complex) and reduces dlam over (B, T) per job (one partial row per job, summed after).
Each row is computed into a per-job buffer (the forward's state never comes back from h) and stored
by numba_simd.store_row: with non-temporal stores for large outputs, plain ones otherwise.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import buffers
from .numba_fpenv import denormals_off, denormals_restore
from .numba_fpenv import flush_if_soft as ftz
from .numba_simd import fence, line_buffer, line_copy, line_zeros, prefetch_row, store_row, streams, wide_vectors
from .numba_threads import serialized

U = np.uint64
# error_model="numpy": no zero-division checks inside loops (they block vectorisation);
# "contract" allows fused multiply-adds and nothing else (exp's range reduction must stay exact).
JIT = dict(parallel=True, cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
ROW = dict(fastmath={"contract"}, error_model="numpy")


def block(B: int, D: int) -> int:
    """Channels per job: whole rows when B gives >= 4 jobs per thread, else blocks of >= 16."""
    want = 4 * numba.get_num_threads()
    if B >= want or D <= 16:
        return max(D, 1)
    per_row = -(-want // max(B, 1))
    blk = -(-D // per_row)
    return max(16, -(-blk // 16) * 16)


@njit
def job_range(job, D, blk):
    """(batch row i, first channel d0, channel count n) of job number `job`."""
    nblk = (D + blk - 1) // blk
    i, d0 = job // nblk, (job % nblk) * blk
    return i, d0, min(D, d0 + blk) - d0


def n_jobs(B: int, D: int, blk: int) -> int:
    return B * ((D + blk - 1) // blk)


@njit(**ROW)
def _scan_row(a, b, s, o, n):
    for j in range(n):
        u = o + U(j)
        s[j] = a[u] * s[j] + b[u]  # s: h_{t-1} in, h_t out (stored by store_row)


@njit(**JIT)
def _scan(a, b, h0, h, reverse, stream, blk, jobs):
    B, T, D = b.shape
    a, b, h, h0 = a.reshape(-1), b.reshape(-1), h.reshape(-1), h0.reshape(-1)
    for job in prange(jobs):
        i, d0, n = job_range(job, D, blk)
        s = h0[i * D + d0:i * D + d0 + n].copy()  # the state, never read back from h
        for step in range(T):
            t = T - 1 - step if reverse else step
            o = U((i * T + t) * D + d0)
            _scan_row(a, b, s, o, n)
            store_row(h, o, s, n, stream)
        fence()


@njit(**ROW)
def _scan_bwd_row(a, hp, dh, ga, gb, carry, o, p, n):
    for jj in range(n):
        j = n - 1 - jj  # descending, as t is (numba_cpu's "Backward order")
        u, w = o + U(j), p + U(j)
        g = dh[u] + carry[j]  # G_t = dh_t + a_{t+1} G_{t+1}
        gb[j] = ftz(g)
        ga[j] = ftz(g * hp[w])
        carry[j] = ftz(a[u] * g)  # subnormals flushed: see numba_fpenv


@njit(**JIT)
def _scan_bwd(a, h, dh, h0, da, db, dh0, stream, blk, jobs):
    B, T, D = h.shape
    a, h, dh, da, db = a.reshape(-1), h.reshape(-1), dh.reshape(-1), da.reshape(-1), db.reshape(-1)
    h0, dh0 = h0.reshape(-1), dh0.reshape(-1)
    for job in prange(jobs):
        fpenv = denormals_off()  # subnormals flushed by the hardware (numba_fpenv), this job only
        i, d0, n = job_range(job, D, blk)
        carry = np.zeros(n, dtype=h0.dtype)  # a_{t+1} G_{t+1}; zero past the end
        ga, gb = np.empty(n, dtype=h0.dtype), np.empty(n, dtype=h0.dtype)  # one row of da, db
        for t in range(T - 1, -1, -1):
            o = U((i * T + t) * D + d0)
            if t > 0:
                _scan_bwd_row(a, h, dh, ga, gb, carry, o, o - U(D), n)
            else:
                _scan_bwd_row(a, h0, dh, ga, gb, carry, o, U(i * D + d0), n)
            store_row(da, o, ga, n, stream)
            store_row(db, o, gb, n, stream)
        dh0[i * D + d0:i * D + d0 + n] = carry
        fence()
        denormals_restore(fpenv)


@serialized
def scan(a, b, h0, reverse=False, out=None):
    B, _, D = b.shape
    h, blk = buffers.empty_like(b) if out is None else out, block(B, D)
    _scan(a, b, h0, h, reverse, streams(h), blk, n_jobs(B, D, blk))
    return h


@serialized
def scan_backward(a, h, dh, h0, out=None):
    B, _, D = h.shape
    da, db, dh0 = (buffers.empty_like(h), buffers.empty_like(h), buffers.empty_like(h0)) if out is None else out
    blk = block(B, D)
    _scan_bwd(a, h, dh, h0, da, db, dh0, streams(da, db), blk, n_jobs(B, D, blk))
    return da, db, dh0


# ------------------------------------------------------------------------------------------- LRU
# Complex arrays are passed as their real views, (Re, Im) pairs, and lam as its real and imaginary
# parts: the loops are then plain float arithmetic on pairs, which LLVM vectorises (a loop over
# numba's complex type stayed scalar: 0.27-0.43 of the copy against 0.95 for the real scan). Offsets
# count reals. The backward runs with hardware flush-to-zero like the others; where there is none (not
# x86-64) its values are not flushed in software.
# The backward walks rows downwards in memory (t runs down) and, unlike the real kernels, reads its
# pairs upwards inside a row; the hardware prefetchers do not run ahead of that, so it prefetches
# the rows AHEAD steps down itself (llvm.prefetch). Measured at (16, 4096, 256) complex64, one thread,
# same session: 8.7 GB/s against 6.4 without, for any AHEAD in 1-8; the same prefetch in the real
# scans' and the cells' backward (whose channels run downwards too) gained nothing or lost up to 13%,
# and in the LRU forward (rows upwards) lost 12-20%. The minGRU and minLSTM forwards, whose gate math
# lets the hardware prefetchers fall behind, prefetch AHEAD rows up (numba_cpu: 1.3x).
# The backward's row runs on 512-bit vectors with cache-line row buffers (numba_simd.wide_vectors,
# line_buffer): 0.87-0.90 against 0.92-0.93 ns per element at (64, 4096, 256) on two threads, 1.50
# against 1.65 on one thread at (8, 512, 256); the forward and the real scans measured no gain.
AHEAD = 2


@njit(**ROW)
def _lru_row(lr, li, bu, s, o, n):
    for j in range(n):
        u = o + U(2 * j)
        a, b, x, y = s[2 * j], s[2 * j + 1], lr[j], li[j]
        s[2 * j] = x * a - y * b + bu[u]  # s: h_{t-1} in, h_t out (stored by store_row)
        s[2 * j + 1] = x * b + y * a + bu[u + U(1)]


@njit(**JIT)
def _lru_fwd(lr, li, bu, h0, h, stream, blk, jobs):
    B, T, D2 = bu.shape
    D = D2 // 2
    bu, h, h0 = bu.reshape(-1), h.reshape(-1), h0.reshape(-1)
    for job in prange(jobs):
        i, d0, n = job_range(job, D, blk)
        s = h0[2 * (i * D + d0):2 * (i * D + d0 + n)].copy()
        lr_j, li_j = lr[d0:d0 + n].copy(), li[d0:d0 + n].copy()
        for t in range(T):
            o = U(2 * ((i * T + t) * D + d0))
            _lru_row(lr_j, li_j, bu, s, o, n)
            store_row(h, o, s, 2 * n, stream)
        fence()


@njit(**ROW)
def _lru_bwd_row(cr, ci, hp, dh, g_row, car_r, car_i, acc_r, acc_i, o, p, n):
    wide_vectors()
    # the carried G and the dlam sums as separate real and imaginary rows (contiguous: vectorised
    # without shuffles); only the arrays themselves are read and written as pairs
    for j in range(n):
        u, w = o + U(2 * j), p + U(2 * j)
        gr, gi = dh[u] + car_r[j], dh[u + U(1)] + car_i[j]  # G_t = dh_t + conj(lam) G_{t+1}
        hr, hi = hp[w], hp[w + U(1)]
        g_row[2 * j], g_row[2 * j + 1] = gr, gi
        acc_r[j] += gr * hr + gi * hi  # dlam = sum_t G_t conj(h_{t-1})
        acc_i[j] += gi * hr - gr * hi
        car_r[j] = cr[j] * gr - ci[j] * gi  # conj(lam) G_t, with (cr, ci) = conj(lam)
        car_i[j] = cr[j] * gi + ci[j] * gr


@njit(**JIT)
def _lru_bwd(lr, li, h, dh, h0, dbu, dh0, dlam_part, stream, blk, jobs):
    B, T, D2 = h.shape
    D = D2 // 2
    h, dh, dbu, h0, dh0 = h.reshape(-1), dh.reshape(-1), dbu.reshape(-1), h0.reshape(-1), dh0.reshape(-1)
    for job in prange(jobs):
        fpenv = denormals_off()  # decaying G_t stays out of the subnormal range (numba_fpenv)
        i, d0, n = job_range(job, D, blk)
        cr, ci = line_copy(lr[d0:d0 + n]), line_copy(-li[d0:d0 + n])
        car_r, car_i = line_zeros(n, h.dtype), line_zeros(n, h.dtype)
        acc_r, acc_i = line_zeros(n, h.dtype), line_zeros(n, h.dtype)
        g_row = line_buffer(2 * n, h.dtype)  # one row of dbu
        for t in range(T - 1, -1, -1):
            o = U(2 * ((i * T + t) * D + d0))
            if t > AHEAD:  # rows AHEAD steps down: see AHEAD
                q = o - U(2 * D * AHEAD)
                prefetch_row(dh, q, 2 * n)
                prefetch_row(h, q - U(2 * D), 2 * n)
            if t > 0:
                _lru_bwd_row(cr, ci, h, dh, g_row, car_r, car_i, acc_r, acc_i, o, o - U(2 * D), n)
            else:
                _lru_bwd_row(cr, ci, h0, dh, g_row, car_r, car_i, acc_r, acc_i, o, U(2 * (i * D + d0)), n)
            store_row(dbu, o, g_row, 2 * n, stream)
        for j in range(n):
            c = 2 * (i * D + d0 + j)
            dh0[c], dh0[c + 1] = car_r[j], car_i[j]
            dlam_part[i, 2 * (d0 + j)], dlam_part[i, 2 * (d0 + j) + 1] = acc_r[j], acc_i[j]
        fence()
        denormals_restore(fpenv)


def _reals(x):
    """The (Re, Im) pairs of a complex array, as a real view."""
    return x.view(x.real.dtype)


@serialized
def lru_scan(lam, bu, h0, out=None):
    B, _, D = bu.shape
    h, blk = buffers.empty_like(bu) if out is None else out, block(B, D)
    _lru_fwd(np.ascontiguousarray(lam.real), np.ascontiguousarray(lam.imag), _reals(bu), _reals(h0), _reals(h),
             streams(h), blk, n_jobs(B, D, blk))
    return h


@serialized
def lru_scan_backward(lam, h, dh, h0, out=None):
    B, _, D = h.shape
    dlam, dbu, dh0 = (buffers.empty_like(lam), buffers.empty_like(h), buffers.empty_like(h0)) if out is None else out
    part, blk = np.zeros((B, 2 * D), dtype=h.real.dtype), block(B, D)
    _lru_bwd(np.ascontiguousarray(lam.real), np.ascontiguousarray(lam.imag), _reals(h), _reals(dh), _reals(h0),
             _reals(dbu), _reals(dh0), part, streams(dbu), blk, n_jobs(B, D, blk))
    part.view(h.dtype).sum(axis=0, out=dlam)
    return dlam, dbu, dh0
