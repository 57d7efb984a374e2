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
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .numba_fpenv import denormals_off, denormals_restore
from .numba_fpenv import flush_if_soft as ftz
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
def _scan_row(a, b, h, hp, o, p, n):
    for j in range(n):
        u, w = o + U(j), p + U(j)
        h[u] = a[u] * hp[w] + b[u]


@njit(**JIT)
def _scan(a, b, h0, h, reverse, blk, jobs):
    B, T, D = b.shape
    a, b, h, h0 = a.reshape(-1), b.reshape(-1), h.reshape(-1), h0.reshape(-1)
    for job in prange(jobs):
        i, d0, n = job_range(job, D, blk)
        for s in range(T):
            t = T - 1 - s if reverse else s
            o = U((i * T + t) * D + d0)
            if s == 0:
                _scan_row(a, b, h, h0, o, U(i * D + d0), n)
            elif reverse:
                _scan_row(a, b, h, h, o, o + U(D), n)
            else:
                _scan_row(a, b, h, h, o, o - U(D), n)


@njit(**ROW)
def _scan_bwd_row(a, hp, dh, da, db, carry, o, p, n):
    for jj in range(n):
        j = n - 1 - jj  # descending, as t is (numba_cpu's "Backward order")
        u, w = o + U(j), p + U(j)
        g = dh[u] + carry[j]  # G_t = dh_t + a_{t+1} G_{t+1}
        db[u] = ftz(g)
        da[u] = ftz(g * hp[w])
        carry[j] = ftz(a[u] * g)  # subnormals flushed: see numba_fpenv


@njit(**JIT)
def _scan_bwd(a, h, dh, h0, da, db, dh0, blk, jobs):
    B, T, D = h.shape
    a, h, dh, da, db = a.reshape(-1), h.reshape(-1), dh.reshape(-1), da.reshape(-1), db.reshape(-1)
    h0, dh0 = h0.reshape(-1), dh0.reshape(-1)
    for job in prange(jobs):
        fpenv = denormals_off()  # subnormals flushed by the hardware (numba_fpenv), this job only
        i, d0, n = job_range(job, D, blk)
        carry = np.zeros(n, dtype=h0.dtype)  # a_{t+1} G_{t+1}; zero past the end
        for t in range(T - 1, -1, -1):
            o = U((i * T + t) * D + d0)
            if t > 0:
                _scan_bwd_row(a, h, dh, da, db, carry, o, o - U(D), n)
            else:
                _scan_bwd_row(a, h0, dh, da, db, carry, o, U(i * D + d0), n)
        dh0[i * D + d0:i * D + d0 + n] = carry
        denormals_restore(fpenv)


@serialized
def scan(a, b, h0, reverse=False, out=None):
    B, _, D = b.shape
    h, blk = np.empty_like(b) if out is None else out, block(B, D)
    _scan(a, b, h0, h, reverse, blk, n_jobs(B, D, blk))
    return h


@serialized
def scan_backward(a, h, dh, h0, out=None):
    B, _, D = h.shape
    da, db, dh0 = (np.empty_like(h), np.empty_like(h), np.empty_like(h0)) if out is None else out
    blk = block(B, D)
    _scan_bwd(a, h, dh, h0, da, db, dh0, blk, n_jobs(B, D, blk))
    return da, db, dh0


# ------------------------------------------------------------------------------------------- LRU
# Complex rows: few enough in practice (the LRU is not the bandwidth target) that the complex type's
# own arithmetic is kept; the same flat addressing. The backward runs with hardware flush-to-zero like
# the others; where there is none (not x86-64) its values are not flushed in software.


@njit(**ROW)
def _lru_row(lam, bu, h, hp, o, p, d0, n):
    for j in range(n):
        u, w = o + U(j), p + U(j)
        h[u] = lam[d0 + j] * hp[w] + bu[u]


@njit(**JIT)
def _lru_fwd(lam, bu, h0, h, blk, jobs):
    B, T, D = bu.shape
    bu, h, h0 = bu.reshape(-1), h.reshape(-1), h0.reshape(-1)
    for job in prange(jobs):
        i, d0, n = job_range(job, D, blk)
        for t in range(T):
            o = U((i * T + t) * D + d0)
            if t == 0:
                _lru_row(lam, bu, h, h0, o, U(i * D + d0), d0, n)
            else:
                _lru_row(lam, bu, h, h, o, o - U(D), d0, n)


@njit(**ROW)
def _lru_bwd_row(lam_c, hp, dh, dbu, carry, acc, o, p, n):
    for j in range(n):
        u, w = o + U(j), p + U(j)
        g = dh[u] + carry[j]  # G_t = dh_t + conj(lam) G_{t+1}
        dbu[u] = g
        acc[j] += g * np.conj(hp[w])  # dlam = sum_t G_t conj(h_{t-1})
        carry[j] = lam_c[j] * g


@njit(**JIT)
def _lru_bwd(lam, h, dh, h0, dbu, dh0, dlam_part, blk, jobs):
    B, T, D = h.shape
    h, dh, dbu, h0, dh0 = h.reshape(-1), dh.reshape(-1), dbu.reshape(-1), h0.reshape(-1), dh0.reshape(-1)
    for job in prange(jobs):
        fpenv = denormals_off()  # decaying G_t stays out of the subnormal range (numba_fpenv)
        i, d0, n = job_range(job, D, blk)
        lam_c = np.conj(lam[d0:d0 + n])
        carry = np.zeros(n, dtype=h.dtype)
        acc = np.zeros(n, dtype=h.dtype)
        for t in range(T - 1, -1, -1):
            o = U((i * T + t) * D + d0)
            if t > 0:
                _lru_bwd_row(lam_c, h, dh, dbu, carry, acc, o, o - U(D), n)
            else:
                _lru_bwd_row(lam_c, h0, dh, dbu, carry, acc, o, U(i * D + d0), n)
        dh0[i * D + d0:i * D + d0 + n] = carry
        dlam_part[i, d0:d0 + n] = acc
        denormals_restore(fpenv)


@serialized
def lru_scan(lam, bu, h0, out=None):
    B, _, D = bu.shape
    h, blk = np.empty_like(bu) if out is None else out, block(B, D)
    _lru_fwd(lam, bu, h0, h, blk, n_jobs(B, D, blk))
    return h


@serialized
def lru_scan_backward(lam, h, dh, h0, out=None):
    B, _, D = h.shape
    dlam, dbu, dh0 = (np.empty_like(lam), np.empty_like(h), np.empty_like(h0)) if out is None else out
    part, blk = np.zeros((B, D), dtype=h.dtype), block(B, D)
    _lru_bwd(lam, h, dh, h0, dbu, dh0, part, blk, n_jobs(B, D, blk))
    part.sum(axis=0, out=dlam)
    return dlam, dbu, dh0
