"""Engine "numpy": the sequential recurrence, written as plainly as possible. It is the oracle every
other engine is tested against, so it is never optimised: one Python-level step per time index.

Backward (Martin & Cundy 2018, sec. 2.2): with G_t = dL/dh_t in total,
    G_t = dh_t + a_{t+1} G_{t+1},  db_t = G_t,  da_t = G_t h_{t-1},  dh0 = a_0 G_0
i.e. the same scan run in reverse with the gates shifted left by one.
"""

from __future__ import annotations

import numpy as np

from . import gates

DTYPES = ("float32", "float64")


def scan(a, b, h0, reverse=False):
    h = np.empty_like(b)
    s = h0.copy()
    T = b.shape[1]
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        s = a[:, t] * s + b[:, t]
        h[:, t] = s
    return h


def scan_backward(a, h, dh, h0):
    T = h.shape[1]
    da, db = np.empty_like(h), np.empty_like(h)
    G = np.zeros_like(h0)
    for t in range(T - 1, -1, -1):
        G = dh[:, t] + (a[:, t + 1] * G if t + 1 < T else 0)
        db[:, t] = G
        da[:, t] = G * (h[:, t - 1] if t > 0 else h0)
    dh0 = a[:, 0] * G if T > 0 else np.zeros_like(h0)
    return da, db, dh0


def min_gru(k, v, h0, log_space):
    return scan(*gates.min_gru_coeffs(np, k, v, log_space), h0)


def min_gru_backward(k, v, h, dh, h0, log_space):
    a, _ = gates.min_gru_coeffs(np, k, v, log_space)
    da, db, dh0 = scan_backward(a, h, dh, h0)
    return (*gates.min_gru_grads(np, k, v, da, db, log_space), dh0)


def min_lstm(kf, ki, v, h0, normalize, log_space):
    return scan(*gates.min_lstm_coeffs(np, kf, ki, v, normalize, log_space), h0)


def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space):
    a, _ = gates.min_lstm_coeffs(np, kf, ki, v, normalize, log_space)
    da, db, dh0 = scan_backward(a, h, dh, h0)
    return (*gates.min_lstm_grads(np, kf, ki, v, da, db, normalize, log_space), dh0)


def lru_scan(lam, bu, h0):
    return scan(np.broadcast_to(lam, bu.shape), bu, h0)


def lru_scan_backward(lam, h, dh, h0):
    """Complex gradients in PyTorch's convention (dL/dRe + i dL/dIm): through h = lam h_prev + bu
    the adjoint runs with conj(lam), and dlam = sum_{b,t} G_t conj(h_{t-1})."""
    lam_c = np.broadcast_to(np.conj(lam), h.shape)
    da, db, dh0 = scan_backward(lam_c, np.conj(h), dh, np.conj(h0))
    return da.sum(axis=(0, 1)), db, dh0
