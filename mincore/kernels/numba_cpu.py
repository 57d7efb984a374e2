"""Engine "numba": fused CPU kernels, the CPU default.

Layout (B, T, D), D contiguous. Work is split into jobs = (batch row b, channel block [d0, d1)) run
in parallel (prange); each job loops over T and, inside, over its channel block, so the innermost
loop is contiguous and vectorises (the gate math uses numba_math's vectorisable exp). A prange over
flattened channels with a strided T loop is ~14x slower (DESIGN.md). Blocks are the whole row when B
alone gives enough jobs; otherwise D is cut into blocks of >= 16 channels.

Traffic per element (the minimum, and what these kernels move): min_gru forward reads k, v and
writes h (3 values); backward reads k, v, h_{t-1}, dh and writes dk, dv (6 values). The gates are
recomputed in the backward instead of stored: an exp is cheaper than a memory round trip.

The backward is the forward scan reversed with gates shifted by one (Martin & Cundy 2018, sec 2.2):
G_t = dh_t + a_{t+1} G_{t+1}, carried in a register-resident block while t runs T-1 .. 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_math import fast_dg, fast_g, fast_sigmoid
from .numba_scan import JIT as _JIT
from .numba_scan import block as _block
from .numba_scan import lru_scan, lru_scan_backward, scan, scan_backward  # noqa: F401 (engine API)

DTYPES = ("float32", "float64")
# row helpers are inlined into the kernels; same float flags as the kernels
_ROW = dict(inline="always", fastmath={"contract"}, error_model="numpy")


# ------------------------------------------------------------------------------------- minGRU
# Row helpers take `log_space` as a constant at each call site, so after inlining each branch is a
# straight-line vectorisable loop (a runtime flag inside the loop made LLVM compute both branches).


@njit(**_ROW)
def _gru_fwd_row(kt, vt, prev, ht, log_space):
    for j in range(kt.size):
        z = fast_sigmoid(kt[j])
        x = fast_g(vt[j]) if log_space else vt[j]
        ht[j] = prev[j] + z * (x - prev[j])  # (1 - z) h_{t-1} + z h~


@njit(**_ROW)
def _gru_bwd_row(kt, vt, hp, dht, dkt, dvt, carry, one, log_space):
    for j in range(kt.size):
        z = fast_sigmoid(kt[j])
        g = dht[j] + carry[j]  # G_t = dh_t + a_{t+1} G_{t+1}
        if log_space:
            x, dx = fast_g(vt[j]), fast_dg(vt[j])
        else:
            x, dx = vt[j], one
        dkt[j] = g * (x - hp[j]) * z * (one - z)
        dvt[j] = g * z * dx
        carry[j] = (one - z) * g


@njit(**_JIT)
def _min_gru_fwd(k, v, h0, h, log_space, blk):
    B, T, D = k.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        prev = h0[i, d0:d1]
        for t in range(T):
            kt, vt, ht = k[i, t, d0:d1], v[i, t, d0:d1], h[i, t, d0:d1]
            if log_space:
                _gru_fwd_row(kt, vt, prev, ht, True)
            else:
                _gru_fwd_row(kt, vt, prev, ht, False)
            prev = ht


@njit(**_JIT)
def _min_gru_bwd(k, v, h, dh, h0, dk, dv, dh0, log_space, one, blk):
    B, T, D = k.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        carry = np.zeros_like(h0[i, d0:d1])  # a_{t+1} G_{t+1}: one running array, zero past the end
        for t in range(T - 1, -1, -1):
            hp = h[i, t - 1, d0:d1] if t > 0 else h0[i, d0:d1]
            kt, vt, dht = k[i, t, d0:d1], v[i, t, d0:d1], dh[i, t, d0:d1]
            dkt, dvt = dk[i, t, d0:d1], dv[i, t, d0:d1]
            if log_space:
                _gru_bwd_row(kt, vt, hp, dht, dkt, dvt, carry, one, True)
            else:
                _gru_bwd_row(kt, vt, hp, dht, dkt, dvt, carry, one, False)
        dh0[i, d0:d1] = carry


def min_gru(k, v, h0, log_space):
    h = np.empty_like(k)
    _min_gru_fwd(k, v, h0, h, log_space, _block(k.shape[0], k.shape[2]))
    return h


def min_gru_backward(k, v, h, dh, h0, log_space):
    dk, dv, dh0 = np.empty_like(k), np.empty_like(v), np.empty_like(h0)
    _min_gru_bwd(k, v, h, dh, h0, dk, dv, dh0, log_space, k.dtype.type(1), _block(k.shape[0], k.shape[2]))
    return dk, dv, dh0


# ------------------------------------------------------------------------------------ minLSTM
# normalize: f' = f / (f + i), i' = i / (f + i) (one reciprocal); the backward needs
# d f'/d kf etc. through diff = log i - log f: d diff/d kf = -(1 - f), d diff/d ki = 1 - i.


@njit(**_ROW)
def _lstm_fwd_row(kft, kit, vt, prev, ht, one, normalize, log_space):
    for j in range(kft.size):
        f, i = fast_sigmoid(kft[j]), fast_sigmoid(kit[j])
        if normalize:
            r = one / (f + i)
            f, i = f * r, i * r
        x = fast_g(vt[j]) if log_space else vt[j]
        ht[j] = f * prev[j] + i * x


@njit(**_ROW)
def _lstm_bwd_row(kft, kit, vt, hp, dht, dkft, dkit, dvt, carry, one, normalize, log_space):
    for j in range(kft.size):
        f, i = fast_sigmoid(kft[j]), fast_sigmoid(kit[j])
        g = dht[j] + carry[j]
        if log_space:
            x, dx = fast_g(vt[j]), fast_dg(vt[j])
        else:
            x, dx = vt[j], one
        if normalize:
            r = one / (f + i)
            fp, ip = f * r, i * r
            ddiff = fp * ip * g * (x - hp[j])
            dkft[j] = -(one - f) * ddiff
            dkit[j] = (one - i) * ddiff
            dvt[j] = g * ip * dx
            carry[j] = fp * g
        else:
            dkft[j] = g * hp[j] * f * (one - f)
            dkit[j] = g * x * i * (one - i)
            dvt[j] = g * i * dx
            carry[j] = f * g


@njit(**_JIT)
def _min_lstm_fwd(kf, ki, v, h0, h, normalize, log_space, one, blk):
    B, T, D = v.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        prev = h0[i, d0:d1]
        for t in range(T):
            a, b, c, ht = kf[i, t, d0:d1], ki[i, t, d0:d1], v[i, t, d0:d1], h[i, t, d0:d1]
            if normalize and log_space:
                _lstm_fwd_row(a, b, c, prev, ht, one, True, True)
            elif normalize:
                _lstm_fwd_row(a, b, c, prev, ht, one, True, False)
            elif log_space:
                _lstm_fwd_row(a, b, c, prev, ht, one, False, True)
            else:
                _lstm_fwd_row(a, b, c, prev, ht, one, False, False)
            prev = ht


@njit(**_JIT)
def _min_lstm_bwd(kf, ki, v, h, dh, h0, dkf, dki, dv, dh0, normalize, log_space, one, blk):
    B, T, D = v.shape
    nblk = (D + blk - 1) // blk
    for job in prange(B * nblk):
        i, d0 = job // nblk, (job % nblk) * blk
        d1 = min(D, d0 + blk)
        carry = np.zeros_like(h0[i, d0:d1])
        for t in range(T - 1, -1, -1):
            hp = h[i, t - 1, d0:d1] if t > 0 else h0[i, d0:d1]
            a, b, c, dht = kf[i, t, d0:d1], ki[i, t, d0:d1], v[i, t, d0:d1], dh[i, t, d0:d1]
            da, db, dc = dkf[i, t, d0:d1], dki[i, t, d0:d1], dv[i, t, d0:d1]
            if normalize and log_space:
                _lstm_bwd_row(a, b, c, hp, dht, da, db, dc, carry, one, True, True)
            elif normalize:
                _lstm_bwd_row(a, b, c, hp, dht, da, db, dc, carry, one, True, False)
            elif log_space:
                _lstm_bwd_row(a, b, c, hp, dht, da, db, dc, carry, one, False, True)
            else:
                _lstm_bwd_row(a, b, c, hp, dht, da, db, dc, carry, one, False, False)
        dh0[i, d0:d1] = carry


def min_lstm(kf, ki, v, h0, normalize, log_space):
    h = np.empty_like(v)
    _min_lstm_fwd(kf, ki, v, h0, h, normalize, log_space, v.dtype.type(1), _block(v.shape[0], v.shape[2]))
    return h


def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space):
    dkf, dki, dv, dh0 = np.empty_like(kf), np.empty_like(ki), np.empty_like(v), np.empty_like(h0)
    _min_lstm_bwd(kf, ki, v, h, dh, h0, dkf, dki, dv, dh0, normalize, log_space, v.dtype.type(1),
                  _block(v.shape[0], v.shape[2]))
    return dkf, dki, dv, dh0
