"""Per-engine, per-dtype tolerances against the float64 oracle (engine "numpy" run in float64).

Error measure: max|got - want| / max|want|, and where that is too strict because the result is a
cancellation, max|got - want| / max|mag| with `mag` the same computation run on magnitudes (|a|, |b|,
|h0|, |dh|, every term of the gate chain rule non-negative: `scales`). That is the textbook bound for
rounding in sums of mixed signs; without it a correct float32 engine "fails" on ill-conditioned
inputs, e.g. dkf ~ (h~ - h_prev) once h has converged to h~ (6% off, from rounding h alone).

Targets (issue 2): float64 engines within 1e-10 of the oracle, float32 within 1e-5 at T = 4096.
A linear-space scan meets them for any T because a gate in (0, 1] forgets old rounding errors: at
(B, T, D) = (2, 4096, 64), minGRU, the numpy engine in float32 is 1.2e-7 off.

The log-space engine cannot meet 1e-5 in float32 at long T. This is a property of Heinsen's
algorithm, not of the implementation (mincore/kernels/logspace.py):
  * it forms a*_t = sum_{s<=t} log a_s and log h_t = a*_t + logcumsumexp(log b - a*), cancelling
    two numbers of size |a*_t|: relative error ~ eps |a*_t|, and |a*_t| grows linearly in t;
  * logaddexp.accumulate rounds once per step in the log domain: ~ eps sqrt(T) even at a = 1;
  * b of both signs runs as h = H(b+) - H(b-), so errors scale with H+ + H- = the magnitude scan.
So its error is C eps (|a*| + sqrt T) max|mag|, with `log_space_extent` = |a*| + sqrt T, |a*| the
max over (b, d) of sum_t |log a_t|. Measured C (float32 vs the float64 oracle, B = 2, D = 32):

    T      gates a           b          error/max|h|  |a*|   max|mag|/max|h|   C
    1031   1                 signed     4.1e-5           0    11.0             0.98
    4096   1                 signed     1.4e-4           0    18.7             0.95
    4096   1                 > 0        1.8e-5           0     1.0             2.32
    4096   U(0.9, 1)         > 0        6.1e-5         217     1.0             1.82
    4096   U(0.001, 1)       > 0        3.0e-4        4184     1.0             0.59
    4096   minGRU k~N(0, 1)  v~N(0, 1)  1.7e-4        3357    ~1               0.4

(backward dk, dv, dh0 at T = 4096: 1.3e-4 .. 4.8e-4), and in float64 1.2e-12 at T = 4096 (minGRU,
k ~ N(0, 3)). The table allows C = 6, 2.5x the worst measured. For minGRU at T = 4096 with k ~ N(0, 1)
that is 1e-5 + 2.4e-3 in float32: the honest accuracy of a float32 log-space scan. Where 1e-5 at long
T matters, use float64 or a linear-space engine (numba, cupy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mincore.kernels import gates, reference

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
EPS64 = float(np.finfo(np.float64).eps)  # 2.22e-16


@dataclass(frozen=True)
class Tol:
    rtol: float  # allowed max|got - want| / max|want| (or / max|mag|)
    per_extent: float = 0.0  # extra allowance per unit of log_space_extent (log-space engines)
    floor: float = 1e-290  # scales below this compare absolutely: results deep in the subnormal
    # range (dh = 1e-36 carried back through 17 gates of 0.5) carry no relative precision

    def allowed(self, extent: float = 0.0) -> float:
        return self.rtol + self.per_extent * extent


DEFAULT = {"float64": Tol(1e-10), "float32": Tol(1e-5, floor=1e-30)}

# engines that differ from DEFAULT, with the reason
TABLE = {
    ("logspace", "float64"): Tol(1e-10, 6 * EPS64),  # error ~ eps (|a*| + sqrt T): see above
    ("logspace", "float32"): Tol(1e-5, 6 * EPS32, floor=1e-30),
}


def tolerance(engine: str, dtype) -> Tol:
    """Tolerance of `engine` run in `dtype` (complex dtypes use their real precision)."""
    real = np.empty(0, dtype).real.dtype.name
    return TABLE.get((engine, real), DEFAULT[real])


def log_space_extent(a) -> float:
    """|a*| + sqrt(T): |a*| = max over (b, d) of sum_t |log|a_t|| for gates a (B, T, D) (or lam
    broadcast to it). The log-space engine's relative error is a small multiple of eps times it."""
    a = np.abs(np.asarray(a))
    if a.size == 0:
        return 0.0
    return float(np.abs(np.log(np.maximum(a, 1e-300))).sum(axis=1).max()) + float(np.sqrt(a.shape[1]))


# --------------------------------------------------------------------------------------------
# magnitude versions of each computation (float64, the oracle's formulas on non-negative terms)


def scan_scales(a, b, h0=None, dh=None):
    """mag of scan: h = scan(|a|, |b|, |h0|); with dh also (da, db, dh0) of the adjoint on magnitudes."""
    b = np.asarray(b)
    a = np.abs(np.broadcast_to(a, b.shape))
    h0 = np.zeros(b.shape[::2]) if h0 is None else np.abs(h0)
    h = reference.scan(a, np.abs(b), h0)
    return h if dh is None else (h, reference.scan_backward(a, h, np.abs(dh), h0))


def min_gru_scales(k, v, h0, dh, log_space):
    a, b = gates.min_gru_coeffs(np, k, v, log_space)
    h, (da, db, dh0) = scan_scales(a, b, h0, dh)
    vm = v if log_space else np.abs(v)  # h~ = g(v) > 0 already in log-space mode
    return h, (*map(np.abs, gates.min_gru_grads(np, k, vm, -da, db, log_space)), dh0)


def min_lstm_scales(kf, ki, v, h0, dh, normalize, log_space):
    a, b = gates.min_lstm_coeffs(np, kf, ki, v, normalize, log_space)
    h, (da, db, dh0) = scan_scales(a, b, h0, dh)
    vm = v if log_space else np.abs(v)
    grads = gates.min_lstm_grads(np, kf, ki, vm, -da, db, normalize, log_space)
    return h, (*map(np.abs, grads), dh0)


def lru_scales(lam, bu, h0, dh):
    h, (da, db, dh0) = scan_scales(lam, bu, h0, dh)
    return h, (da.sum(axis=(0, 1)), db, dh0)


# --------------------------------------------------------------------------------------------


def rel_err(got, want, scale=None, floor: float = 1e-290) -> float:
    """max|got - want| / max(max|scale|, floor), scale = want by default; 0 for empty arrays."""
    got, want = np.asarray(got), np.asarray(want)
    if want.size == 0:
        return 0.0
    diff = float(np.abs(got.astype(want.dtype) - want).max())
    return diff / max(float(np.abs(want if scale is None else scale).max()), floor)


def assert_close(got, want, tol: Tol, what: str = "", extent: float = 0.0, scale=None) -> None:
    """Shape equal, finite, and error <= tol.allowed(extent), the error relative to max|want| or,
    if that fails and `scale` (an array or a callable giving one) is given, to max|scale|."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values in the result"
    allowed = tol.allowed(extent)
    err = rel_err(got, want, None, tol.floor)
    if err > allowed and scale is not None:
        err = rel_err(got, want, scale() if callable(scale) else scale, tol.floor)
        what += " (relative to the magnitude computation)"
    assert err <= allowed, f"{what}: relative error {err:.3g} > allowed {allowed:.3g}"
