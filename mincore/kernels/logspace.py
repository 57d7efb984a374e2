"""Engine "logspace": Heinsen's parallel scan in log space (Heinsen 2023; Feng et al. 2024, appendix B),
written once against the array module, so the same code runs on NumPy and CuPy arrays.

For h_t = a_t h_{t-1} + b_t with a_t > 0 and b_t, h0 >= 0:

    a*_t  = sum_{s<=t} log a_s
    log h_t = a*_t + logcumsumexp_{s=-1..t}(log b_s - a*_s),   log b_{-1} = log h0, a*_{-1} = 0

i.e. h_t = prod_{s<=t} a_s * (h0 + sum_{s<=t} b_s / prod_{r<=s} a_r), every product kept as a sum of logs.

Signs (beyond the paper's listing, which needs b > 0): the recurrence is linear in (b, h0), so
h = H(b+, h0+) - H(b-, h0-) with b+ = max(b, 0), b- = max(-b, 0); each half is a scan of
non-negative values, log 0 = -inf and exp(-inf) = 0 (no NaNs). The negative half is skipped when
b and h0 have no negative entry. Only the gate must be positive: a <= 0 raises ValueError (`a = 0
gives b` is out of reach, log 0 has no finite a*). `POSITIVE_GATES = True` tells tests so.

Gates: min_gru / min_lstm take log a and log b straight from the pre-activations
(log(1 - z) = -softplus(k), log z = -softplus(-k), log g(v), log f' = -softplus(diff), ...), never the
log of a linear value, so a gate of 1e-40 is exact in log space rather than a log(0).

LRU (complex): a = lam is constant per channel, so a*_t = (t + 1) log lam exactly (no cumsum drift);
its phase is reduced mod 2 pi in float64 before the sum so exp(i * phase) keeps its precision; the
logcumsumexp runs over complex logs with the real part as the stabiliser, in the same blocks as the
real scans (one scan over the whole sequence was 5e-3 off in complex64 at |lam| = 0.5, T = 1031).
lam = 0 raises ValueError.

Saturated gates: log a is raised to `log_gate_floor(dtype)` (log of the smallest normal number) before
the scan, so a gate of exactly 0 (k = +inf) or exp(-1e4) gives no NaN and no garbage; NaN inputs give NaN.

Backward (Martin & Cundy 2018, sec. 2.2): G_t = dh_t + a_{t+1} G_{t+1} is the same scan run in reverse
with the gates shifted left by one (any sign: the same +/- split); db = G, da_t = G_t h_{t-1},
dh0 = a_0 G_0; then the chain rule of mincore.kernels.gates.

Precision, and why blocks: a* grows like T * mean(log a), and log h = a* + (log b - a*) cancels two
numbers of that size, so one Heinsen scan over the whole sequence is eps * |a*_t| off rather than
eps: in float32 at (B, T, D) = (2, 4096, 32) that measured 1.3e-4 (scan, a ~ U(0.5, 1)), 2.5e-4
(minGRU) and 1.9e-4 (minLSTM) where a sequential float32 scan is 1e-7 off. So `_heinsen` runs the
scan in blocks of CHUNK = 32 steps (all blocks at once, from a zero state) and carries the state
entering each block sequentially in log space, one logaddexp per block: a* never sums more than 32
gates. Measured at the same shape: minGRU float32 1.75e-6 forward, 1.2e-6 .. 1.7e-6 backward (was
1.7e-4), float64 3.5e-15 (was 1.2e-12). The price is a loop of T / 32 vectorised steps over (B, D),
cheap next to the block scans (tests/tolerances.py has the error model).
logcumsumexp is exact-to-rounding: NumPy's sequential `logaddexp.accumulate` where the array module
has it, else a log-depth (Hillis-Steele) scan of logaddexp (O(T log T) work, e.g. CuPy, whose
ufunc.accumulate covers add and multiply only). A cumsum(exp(x - max)) shortcut is NOT used: with a
single max per channel, early prefix sums underflow to 0 once the later gates' product does.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from . import gates

DTYPES = ("float32", "float64")
POSITIVE_GATES = True  # scan needs a > 0, lru_scan needs lam != 0 (the logs must be finite)


# --------------------------------------------------------------------------------------------
# log-space building blocks


def _log_pos(xp, x):
    """log(max(x, 0)) with log 0 = -inf, NaN kept (so it reaches h, as in the oracle), no warning."""
    pos = x > 0  # astype: keep float32 even where an array module promotes the python -inf
    y = xp.where(pos, xp.log(xp.where(pos, x, 1)), xp.where(x == x, -xp.inf, xp.nan))
    return y.astype(x.dtype, copy=False)


def _logaddexp_doubling(xp, x, add):
    """Inclusive prefix `add`-reduction along axis 1 in ceil(log2 T) vectorised passes."""
    y = x.copy()
    s = 1
    while s < y.shape[1]:
        y[:, s:] = add(xp, y[:, s:], y[:, :-s])  # the right side is built from the old y first
        s *= 2
    return y


def logcumsumexp(xp, x):
    """log(cumsum(exp(x), axis=1)) for real x, stable for any range (see the module docstring)."""
    acc = getattr(xp.logaddexp, "accumulate", None)
    if acc is not None:
        try:
            return acc(x, axis=1)
        except (NotImplementedError, TypeError):  # CuPy: accumulate for add and multiply only
            pass
    return _logaddexp_doubling(xp, x, lambda xp_, u, v: xp_.logaddexp(u, v))


def _clog(xp, z):
    """Complex log with log 0 = -inf + 0j, and no warning."""
    nz = z != 0
    return xp.where(nz, xp.log(xp.where(nz, z, 1)), -xp.inf).astype(z.dtype, copy=False)


def _clogaddexp(xp, u, v):
    """log(exp(u) + exp(v)) for complex logs, shifted by the larger real part."""
    m = xp.maximum(u.real, v.real)
    m = xp.where(m == -xp.inf, 0, m)  # both terms are 0: avoid -inf - -inf
    return _clog(xp, xp.exp(u - m) + xp.exp(v - m)) + m


def clogcumsumexp(xp, x):
    """log(cumsum(exp(x), axis=1)) for complex logs x (no ufunc exists for it: log-depth scan)."""
    return _logaddexp_doubling(xp, x, _clogaddexp)


CHUNK = 32  # steps per Heinsen block (see "Precision" above): error ~ eps * (CHUNK |log a| + sqrt CHUNK)


def log_gate_floor(dtype) -> float:
    """The smallest log a the real scans use: log of the dtype's smallest normal number (-87.3 float32,
    -708.4 float64). A smaller gate (minGRU at k = 1e4, or k = +inf: a = 0, log a = -inf) is raised to
    it: h_t moves by less than that number times |h_{t-1}|, as in the linear-space engines, while a*
    stays finite (log a = -inf gave NaN, -1e30 wiped every other term out of a*). Error: see
    "Precision" above; a saturated gate's |log a| counts there with at most |floor|."""
    return float(np.log(np.finfo(dtype).tiny))


def _carry_blocks(xp, a_star, lb, log_h0, lcse, laddexp):
    """h of the blocked scan from the block-local a* ((B n, C, D), or (1, C, D) shared by all blocks)
    and log b (B n, C, D): every block runs Heinsen's scan from a zero state at once, then the states
    entering the blocks are carried block to block in log space, log s_{j+1} = laddexp(a*_j + log s_j,
    log hz_j) with a*_j and hz_j the block's gate product and zero-state end value, and added back:
    h = hz + exp(a* + log s). Returns (B, n C, D)."""
    B, D = log_h0.shape
    n, C = lb.shape[0] // B, lb.shape[1]
    if n == 0:  # T = 0
        return xp.empty((B, 0, D), lb.dtype)
    log_hz = a_star + lcse(xp, lb - a_star)
    a_end = xp.broadcast_to(a_star[:, -1], (B * n, D)).reshape(B, n, D)
    hz_end = log_hz[:, -1].reshape(B, n, D)
    log_s = xp.empty((B, n, D), log_hz.dtype)  # log of the state entering each block
    log_s[:, 0] = log_h0
    for j in range(n - 1):
        log_s[:, j + 1] = laddexp(a_end[:, j] + log_s[:, j], hz_end[:, j])
    h = xp.exp(log_hz) + xp.exp(a_star + log_s.reshape(B * n, 1, D))
    return h.reshape(B, n * C, D)


def _pad_blocks(xp, x, fill):
    """(B, T, D) -> (B n, C, D) with the last block padded by `fill` (padded steps come after T and
    are cut off, so they never reach an output)."""
    B, T, D = x.shape
    n = -(-T // CHUNK)
    if n * CHUNK > T:
        x = xp.concatenate([x, xp.full((B, n * CHUNK - T, D), fill, x.dtype)], axis=1)
    return x.reshape(B * n, CHUNK, D)


def _heinsen(xp, log_a, log_b, log_h0):
    """h for h_t = a_t h_{t-1} + b_t from log a (B, T, D), log b >= -inf, log h0 (B, D): Heinsen's
    scan in blocks of CHUNK steps (`_carry_blocks`), so a* never sums more than CHUNK gates, whatever
    T is; log a is raised to `log_gate_floor` first."""
    B, T, D = log_a.shape
    log_a = xp.maximum(log_a, log_gate_floor(log_a.dtype))  # NaN stays NaN
    a_star = xp.cumsum(_pad_blocks(xp, log_a, 0), axis=1)
    lb = _pad_blocks(xp, log_b, -xp.inf)
    return _carry_blocks(xp, a_star, lb, log_h0, logcumsumexp, xp.logaddexp)[:, :T]


def _flip(x):
    return x[:, ::-1]


def _scan_signed(xp, log_a, log_bp, log_bn, h0, reverse=False):
    """h = H(b+, h0+) - H(b-, h0-) given log a, log b+ and log b- (None: b has no negative part)."""
    if reverse:
        log_a, log_bp = _flip(log_a), _flip(log_bp)
        log_bn = None if log_bn is None else _flip(log_bn)
    h = _heinsen(xp, log_a, log_bp, _log_pos(xp, h0))
    if log_bn is not None or bool(xp.any(h0 < 0)):
        if log_bn is None:
            log_bn = xp.full_like(log_bp, -xp.inf)
        h = h - _heinsen(xp, log_a, log_bn, _log_pos(xp, -h0))
    return xp.ascontiguousarray(_flip(h) if reverse else h)


def _split(xp, y, log_scale=0.0):
    """(log(scale * y+), log(scale * y-)) for any-sign y; the second is None when y >= 0."""
    neg = _log_pos(xp, -y) + log_scale if bool(xp.any(y < 0)) else None
    return _log_pos(xp, y) + log_scale, neg


def _check_positive(xp, name, a):
    bad = ~(a > 0)  # NaN counts as bad too
    if bool(xp.any(bad)):
        n, lo = int(bad.sum()), float(xp.nanmin(a)) if bool(xp.any(a == a)) else math.nan
        raise ValueError(f"{name}: engine 'logspace' takes log({name}), so it needs {name} > 0 "
                         f"everywhere; got {n} of {a.size} entries <= 0 or NaN (min {lo:.4g}); "
                         "expected > 0 (use engine='numba' or 'numpy' for gates that can be 0 or negative)")


def _scan_adjoint(xp, log_a, h, dh, h0):
    """(da, db, dh0) of the scan from log a, its output h and dL/dh (any signs)."""
    if h.shape[1] == 0:
        return xp.empty_like(h), xp.empty_like(h), xp.zeros_like(h0)
    log_a_next = xp.concatenate([log_a[:, 1:], xp.zeros_like(log_a[:, :1])], axis=1)
    G = _scan_signed(xp, log_a_next, *_split(xp, dh), xp.zeros_like(h0), reverse=True)
    h_prev = xp.concatenate([h0[:, None], h[:, :-1]], axis=1)
    return G * h_prev, G, xp.exp(log_a[:, 0]) * G[:, 0]


# --------------------------------------------------------------------------------------------
# the engine interface (mincore.backend)


def scan(a, b, h0, reverse=False):
    xp = get_array_module(a)
    _check_positive(xp, "a", a)
    return _scan_signed(xp, xp.log(a), *_split(xp, b), h0, reverse)


def scan_backward(a, h, dh, h0):
    xp = get_array_module(a)
    _check_positive(xp, "a", a)
    return _scan_adjoint(xp, xp.log(a), h, dh, h0)


def _gru_log_a(xp, k):
    return gates.log_sigmoid(xp, -k)  # log(1 - z) = -softplus(k)


def _lstm_logs(xp, kf, ki, normalize):
    """(log f', log i'), or (log f, log i) without normalisation."""
    if normalize:
        diff = gates.softplus(xp, -kf) - gates.softplus(xp, -ki)
        return gates.log_sigmoid(xp, -diff), gates.log_sigmoid(xp, diff)
    return gates.log_sigmoid(xp, kf), gates.log_sigmoid(xp, ki)


def _b_logs(xp, log_gate, v, log_space):
    """log b+ and log b- of b = gate * h~: h~ = g(v) > 0 in log_space mode, else v of any sign."""
    if log_space:
        return log_gate + gates.log_g(xp, v), None
    return _split(xp, v, log_gate)


def min_gru(k, v, h0, log_space):
    xp = get_array_module(k)
    log_z = gates.log_sigmoid(xp, k)
    return _scan_signed(xp, _gru_log_a(xp, k), *_b_logs(xp, log_z, v, log_space), h0)


def min_gru_backward(k, v, h, dh, h0, log_space):
    xp = get_array_module(k)
    da, db, dh0 = _scan_adjoint(xp, _gru_log_a(xp, k), h, dh, h0)
    return (*gates.min_gru_grads(xp, k, v, da, db, log_space), dh0)


def min_lstm(kf, ki, v, h0, normalize, log_space):
    xp = get_array_module(kf)
    log_f, log_i = _lstm_logs(xp, kf, ki, normalize)
    return _scan_signed(xp, log_f, *_b_logs(xp, log_i, v, log_space), h0)


def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space):
    xp = get_array_module(kf)
    log_f, _ = _lstm_logs(xp, kf, ki, normalize)
    da, db, dh0 = _scan_adjoint(xp, log_f, h, dh, h0)
    return (*gates.min_lstm_grads(xp, kf, ki, v, da, db, normalize, log_space), dh0)


def _lru_a_star(xp, lam, T):
    """a*_t = (t + 1) log lam, (T, D), formed in float64 with the phase reduced mod 2 pi before the
    cast (the phase (t + 1) arg(lam) reaches ~1e4 rad at T = 4096: float32 keeps ~1e-3 rad of it)."""
    t = xp.arange(1, T + 1, dtype=np.float64)[:, None]
    mag = t * xp.log(xp.abs(lam)).astype(np.float64)
    phase = xp.remainder(t * xp.angle(lam).astype(np.float64), 2 * math.pi)
    return (mag + 1j * phase).astype(lam.dtype)


def _lru(xp, lam, bu, h0, reverse=False):
    """The complex scan in blocks of CHUNK steps, as `_heinsen`: a* = (j + 1) log lam inside a block is
    the same for every block (so it is formed once, in float64), and the carry runs in complex logs."""
    if reverse:
        bu = _flip(bu)
    T = bu.shape[1]
    a_star = _lru_a_star(xp, lam, CHUNK)[None]
    lb = _pad_blocks(xp, _clog(xp, bu), complex(-math.inf, 0))

    def cladd(u, v):
        return _clogaddexp(xp, u, v)

    h = _carry_blocks(xp, a_star, lb, _clog(xp, h0), clogcumsumexp, cladd)[:, :T]
    return xp.ascontiguousarray(_flip(h) if reverse else h)


def _check_nonzero(xp, lam):
    if bool(xp.any(lam == 0)):
        raise ValueError(f"lam: engine 'logspace' takes log(lam), so it needs lam != 0; got "
                         f"{int((lam == 0).sum())} zero entries of {lam.size}; expected |lam| > 0")


def lru_scan(lam, bu, h0):
    xp = get_array_module(lam)
    _check_nonzero(xp, lam)
    return _lru(xp, lam, bu, h0)


def lru_scan_backward(lam, h, dh, h0):
    """PyTorch's convention (dL/dRe + i dL/dIm): G_t = dh_t + conj(lam) G_{t+1},
    dbu = G, dlam = sum_{b,t} G_t conj(h_{t-1}), dh0 = conj(lam) G_0."""
    xp = get_array_module(lam)
    _check_nonzero(xp, lam)
    if h.shape[1] == 0:
        return xp.zeros_like(lam), xp.empty_like(h), xp.zeros_like(h0)
    G = _lru(xp, xp.conj(lam), dh, xp.zeros_like(h0), reverse=True)
    h_prev = xp.concatenate([h0[:, None], h[:, :-1]], axis=1)
    return (G * xp.conj(h_prev)).sum(axis=(0, 1)), G, xp.conj(lam) * G[:, 0]
