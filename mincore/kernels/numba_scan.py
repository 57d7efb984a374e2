"""numba kernels for the plain linear scans: h_t = a_t h_{t-1} + b_t (real, any a) and the LRU's
h_t = lam h_{t-1} + bu_t (complex, lam per channel). Same job layout as numba_cpu: one job per
(batch row, channel block), T outermost inside a job, the contiguous channel loop innermost.

Traffic: scan forward reads a, b and writes h (3 values per element); backward reads a, h_{t-1},
dh and writes da, db (5). LRU forward reads bu, writes h (2 complex); backward reads h_{t-1}, dh,
writes dbu (3 complex) and reduces dlam over (B, T) per job (one partial row per job, summed after).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# error_model="numpy": no zero-division checks inside loops (they block vectorisation);
# "contract" allows fused multiply-adds and nothing else.
JIT = dict(parallel=True, cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")


def block(B: int, D: int) -> int:
    """Channels per job: whole rows when B gives >= 4 jobs per thread, else blocks of >= 16."""
    want = 4 * numba.get_num_threads()
    if B >= want or D <= 16:
        return max(D, 1)
    per_row = -(-want // max(B, 1))
    blk = -(-D // per_row)
    return max(16, -(-blk // 16) * 16)


@njit(**JIT)
def _scan(a, b, h0, h, reverse, blk):
    B, T, D = b.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        prev = h0[i, d0:d1]
        for s in range(T):
            t = T - 1 - s if reverse else s
            at, bt, ht = a[i, t, d0:d1], b[i, t, d0:d1], h[i, t, d0:d1]
            for j in range(d1 - d0):
                ht[j] = at[j] * prev[j] + bt[j]
            prev = ht


@njit(**JIT)
def _scan_bwd(a, h, dh, h0, da, db, dh0, blk):
    B, T, D = h.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        carry = np.zeros_like(h0[i, d0:d1])  # a_{t+1} G_{t+1}; zero past the end
        for t in range(T - 1, -1, -1):
            hp = h[i, t - 1, d0:d1] if t > 0 else h0[i, d0:d1]
            at, dht, dat, dbt = a[i, t, d0:d1], dh[i, t, d0:d1], da[i, t, d0:d1], db[i, t, d0:d1]
            for j in range(d1 - d0):
                g = dht[j] + carry[j]
                dbt[j] = g
                dat[j] = g * hp[j]
                carry[j] = at[j] * g
        dh0[i, d0:d1] = carry


def scan(a, b, h0, reverse=False):
    h = np.empty_like(b)
    _scan(a, b, h0, h, reverse, block(b.shape[0], b.shape[2]))
    return h


def scan_backward(a, h, dh, h0):
    da, db, dh0 = np.empty_like(h), np.empty_like(h), np.empty_like(h0)
    _scan_bwd(a, h, dh, h0, da, db, dh0, block(h.shape[0], h.shape[2]))
    return da, db, dh0


# ------------------------------------------------------------------------------------------- LRU


@njit(**JIT)
def _lru_fwd(lam, bu, h0, h, blk):
    B, T, D = bu.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        lr, li = lam[d0:d1].real.copy(), lam[d0:d1].imag.copy()
        pr, pi = h0[i, d0:d1].real.copy(), h0[i, d0:d1].imag.copy()
        for t in range(T):
            bt, ht = bu[i, t, d0:d1], h[i, t, d0:d1]
            for j in range(d1 - d0):
                # complex multiply spelled out on (re, im) pairs: vectorises, no libm calls
                r = lr[j] * pr[j] - li[j] * pi[j] + bt[j].real
                m = lr[j] * pi[j] + li[j] * pr[j] + bt[j].imag
                pr[j], pi[j] = r, m
                ht[j] = complex(r, m)


@njit(**JIT)
def _lru_bwd(lam, h, dh, h0, dbu, dh0, dlam_part, blk):
    B, T, D = h.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        lam_c = np.conj(lam[d0:d1])
        carry = np.zeros_like(h0[i, d0:d1])  # conj(lam) G_{t+1}
        acc = np.zeros_like(carry)  # sum_t G_t conj(h_{t-1}) for this batch row
        for t in range(T - 1, -1, -1):
            hp = h[i, t - 1, d0:d1] if t > 0 else h0[i, d0:d1]
            dht, dbt = dh[i, t, d0:d1], dbu[i, t, d0:d1]
            for j in range(d1 - d0):
                g = dht[j] + carry[j]
                dbt[j] = g
                acc[j] += g * np.conj(hp[j])
                carry[j] = lam_c[j] * g
        dh0[i, d0:d1] = carry
        dlam_part[i, d0:d1] = acc


def lru_scan(lam, bu, h0):
    h = np.empty_like(bu)
    _lru_fwd(lam, bu, h0, h, block(bu.shape[0], bu.shape[2]))
    return h


def lru_scan_backward(lam, h, dh, h0):
    B, _, D = h.shape
    dbu, dh0, part = np.empty_like(h), np.empty_like(h0), np.zeros((B, D), dtype=h.dtype)
    _lru_bwd(lam, h, dh, h0, dbu, dh0, part, block(B, D))
    return part.sum(axis=0), dbu, dh0
