"""Gate math shared by the oracle, the log-space engine and the *_step functions, written once
against the array module (numpy or cupy). Names follow "Were RNNs All We Needed?" (Feng et al. 2024):

    minGRU:  z = sigmoid(k), a = 1 - z = sigmoid(-k), b = z * h~
    minLSTM: f = sigmoid(kf), i = sigmoid(ki); normalize: f' = f / (f + i) = sigmoid(-diff),
             i' = sigmoid(diff) with diff = softplus(-kf) - softplus(-ki)   (appendix B)
    h~ = v, or g(v) with g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0) in log_space mode.
"""

from __future__ import annotations


def sigmoid(xp, x):
    # exp of a non-positive argument only: no overflow for either sign
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def softplus(xp, x):
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def log_sigmoid(xp, x):
    return -softplus(xp, -x)


def g(xp, v):
    """The paper's positive activation for h~ (appendix B): continuous, g(0) = 0.5."""
    return xp.where(v >= 0, v + 0.5, sigmoid(xp, v))


def dg(xp, v):
    s = sigmoid(xp, v)
    return xp.where(v >= 0, 1.0, s * (1 - s)).astype(v.dtype, copy=False)


def log_g(xp, v):
    return xp.where(v >= 0, xp.log(xp.maximum(v, 0) + 0.5), log_sigmoid(xp, v))


def h_tilde(xp, v, log_space):
    return g(xp, v) if log_space else v


def dh_tilde(xp, v, log_space):
    return dg(xp, v) if log_space else xp.ones_like(v)


def min_gru_coeffs(xp, k, v, log_space):
    """(a, b) of the minGRU scan h_t = a_t h_{t-1} + b_t."""
    return sigmoid(xp, -k), sigmoid(xp, k) * h_tilde(xp, v, log_space)


def min_lstm_coeffs(xp, kf, ki, v, normalize, log_space):
    """(a, b) of the minLSTM scan; normalize uses the log-space form of f', i' (stable for any kf, ki)."""
    ht = h_tilde(xp, v, log_space)
    if normalize:
        diff = softplus(xp, -kf) - softplus(xp, -ki)
        return sigmoid(xp, -diff), sigmoid(xp, diff) * ht
    return sigmoid(xp, kf), sigmoid(xp, ki) * ht


def min_gru_grads(xp, k, v, da, db, log_space):
    """Chain rule from (da, db) of the scan to (dk, dv): a = 1 - z, b = z h~, dz/dk = z (1 - z).
    1 - z is computed as sigmoid(-k): 1 - sigmoid(k) cancels when z is near 1 (float32, k > 5)."""
    z, one_minus_z = sigmoid(xp, k), sigmoid(xp, -k)
    ht = h_tilde(xp, v, log_space)
    return (db * ht - da) * z * one_minus_z, db * z * dh_tilde(xp, v, log_space)


def min_lstm_grads(xp, kf, ki, v, da, db, normalize, log_space):
    """Chain rule from (da, db) to (dkf, dki, dv)."""
    ht = h_tilde(xp, v, log_space)
    dht = dh_tilde(xp, v, log_space)
    f, i = sigmoid(xp, kf), sigmoid(xp, ki)
    cf, ci = sigmoid(xp, -kf), sigmoid(xp, -ki)  # 1 - f, 1 - i without cancellation
    if normalize:
        diff = softplus(xp, -kf) - softplus(xp, -ki)
        fp, ip = sigmoid(xp, -diff), sigmoid(xp, diff)
        ddiff = fp * ip * (db * ht - da)  # d f'/d diff = -f' i', d i'/d diff = f' i'
        return -cf * ddiff, ci * ddiff, db * ip * dht
    return da * f * cf, db * ht * i * ci, db * i * dht
