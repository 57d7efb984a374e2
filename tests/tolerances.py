"""Per-engine, per-dtype tolerances against the float64 oracle (engine "numpy" run in float64).

Error measure: max|got - want| / max|want|, and where that is too strict because the result is a
cancellation, max|got - want| / max|mag| with `mag` the same computation run on magnitudes (|a|, |b|,
|h0|, |dh|, every term of the gate chain rule non-negative: `scales`). That is the textbook bound for
rounding in sums of mixed signs; without it a correct float32 engine "fails" on ill-conditioned
inputs, e.g. dkf ~ (h~ - h_prev) once h has converged to h~ (6% off, from rounding h alone).

Targets (issue 2): float64 engines within 1e-10 of the oracle, float32 within 1e-5 at T = 4096.
A linear-space scan meets them for any T because a gate in (0, 1] forgets old rounding errors: at
(B, T, D) = (2, 4096, 64), minGRU, the numpy engine in float32 is 1.2e-7 off.

Heinsen's log-space scan on its own cannot meet 1e-5 in float32 at long T:
  * it forms a*_t = sum_{s<=t} log a_s and log h_t = a*_t + logcumsumexp(log b - a*), cancelling
    two numbers of size |a*_t|: relative error ~ eps |a*_t|, and |a*_t| grows linearly in t;
  * logaddexp.accumulate rounds once per step in the log domain: ~ eps sqrt(T) even at a = 1;
  * b of both signs runs as h = H(b+) - H(b-), so errors scale with H+ + H- = the magnitude scan.
Measured over a whole T = 4096 sequence in float32: 1.3e-4 (scan, a ~ U(0.5, 1)), 1.7e-4 (minGRU,
k ~ N(0, 1)), up to 4.8e-4 in the backward. So mincore's `logspace` engine runs it in blocks of
CHUNK = 32 steps and carries the state from block to block (mincore/kernels/logspace.py): a* never
sums more than 32 gates. Its error is then C eps (|a*|_block + sqrt(CHUNK + T / CHUNK)) max|mag|,
with `log_space_extent` = that bracket, |a*|_block the largest sum of |log a| over one block.
Measured (float32 vs the float64 oracle, B = 2, D = 32, k, v ~ N(0, 1), T = 4096): minGRU forward
1.75e-6, backward 1.2e-6 .. 1.7e-6; float64 3.5e-15. The table allows C = 6; the T = 4096 test
(test_float32_long_sequence) holds every engine, this one included, to the flat 1e-5.
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
    ("logspace", "float64"): Tol(1e-10, 6 * EPS64),  # error ~ eps (|a*|_block + sqrt ...): see above
    ("logspace", "float32"): Tol(1e-5, 6 * EPS32, floor=1e-30),
}


def tolerance(engine: str, dtype) -> Tol:
    """Tolerance of `engine` run in `dtype` (complex dtypes use their real precision)."""
    real = np.empty(0, dtype).real.dtype.name
    return TABLE.get((engine, real), DEFAULT[real])


def log_space_extent(a, dtype="float64") -> float:
    """|a*|_block + sqrt(CHUNK + T / CHUNK): |a*|_block = the largest sum of |log|a_t|| over one block of
    the logspace engine's CHUNK steps, for gates a (B, T, D), each |log a_t| capped at the engine's
    floor for `dtype` (smaller gates are raised to it). The log-space engine's relative error is a
    small multiple of eps times it."""
    from mincore.kernels.logspace import CHUNK, log_gate_floor

    a = np.abs(np.asarray(a))
    if a.size == 0:
        return 0.0
    B, T, D = a.shape
    real = np.empty(0, dtype).real.dtype
    n = -(-T // CHUNK)
    logs = np.zeros((B, n * CHUNK, D))
    with np.errstate(divide="ignore"):
        logs[:, :T] = np.minimum(np.abs(np.log(a)), -log_gate_floor(real))
    return float(logs.reshape(B, n, CHUNK, D).sum(axis=2).max()) + float(np.sqrt(min(T, CHUNK) + T // CHUNK))


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
