"""The numba engine's own pieces: the vectorisable exp/sigmoid/g against NumPy in float64, subnormal
flushing in the backward kernels, and preallocated outputs (`out=`)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import mincore
from mincore.kernels import gates, numba_cpu
from mincore.kernels.numba_fpenv import HARDWARE_FTZ
from mincore.kernels.numba_math import fast_dg, fast_exp, fast_g, fast_lstm_gates, fast_sigmoid, flush_subnormal


@njit
def _apply(x, which):
    out = np.empty_like(x)
    for j in range(x.size):
        if which == 0:
            out[j] = fast_exp(x[j])
        elif which == 1:
            out[j] = fast_sigmoid(x[j])
        elif which == 2:
            out[j] = fast_g(x[j])
        elif which == 3:
            out[j] = fast_dg(x[j])
        else:
            out[j] = flush_subnormal(x[j])
    return out


# relative error bounds: float32 within a few units of rounding, float64 within ~1e-15
RTOL = {np.float32: 4e-7, np.float64: 4e-15}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_functions_match_numpy(dtype):
    lim = 80.0 if dtype == np.float32 else 700.0
    x = np.concatenate([np.linspace(-lim, lim, 20001), [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5]]).astype(dtype)
    x64 = x.astype(np.float64)
    want = {0: np.exp(x64), 1: gates.sigmoid(np, x64), 2: gates.g(np, x64), 3: gates.dg(np, x64)}
    for which, ref in want.items():
        got = _apply(x, which)
        assert got.dtype == dtype  # constants are typed: float32 code never widens
        err = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), np.finfo(dtype).tiny)
        assert err.max() <= RTOL[dtype], (which, float(err.max()), x64[np.argmax(err)])


@njit
def _lstm_gates(kf, ki):
    out = np.empty((4, kf.size), dtype=kf.dtype)
    for j in range(kf.size):
        out[0, j], out[1, j], out[2, j], out[3, j] = fast_lstm_gates(kf[j], ki[j])
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_lstm_gates_match_the_oracle(dtype):
    """f', i' and the backward's (1 - f) i', (1 - i) f' on every pair of ordinary and saturating
    pre-activations (|k| up to 1e4, and the infinities) against the float64 gates; NaN in, NaN out."""
    edge = [0.0, -0.0, 1e-30, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, 86.0, -86.0, 90.0, -90.0, 95.0, -95.0,
            700.0, -700.0, 750.0, -750.0, 1e4, -1e4, np.inf, -np.inf]
    kf, ki = (a.ravel().astype(dtype) for a in np.meshgrid(edge, edge))
    both_neg_inf = (kf == -np.inf) & (ki == -np.inf)  # f = i = 0: f' = 0 / 0 in the oracle too
    kf, ki = kf[~both_neg_inf], ki[~both_neg_inf]
    x, y = kf.astype(np.float64), ki.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = gates.softplus(np, -x) - gates.softplus(np, -y)
        fp, ip = gates.sigmoid(np, -diff), gates.sigmoid(np, diff)
        want = [fp, ip, gates.sigmoid(np, -x) * ip, gates.sigmoid(np, -y) * fp]
    got = _lstm_gates(kf, ki)
    tiny = np.finfo(dtype).tiny
    for name, g, w in zip(("f'", "i'", "(1 - f) i'", "(1 - i) f'"), got, want, strict=True):
        err = np.abs(g.astype(np.float64) - w)
        # relative to the value, or absolute below the floor of the exps far below the range
        # (fast_exp returns at least 2^-125 = 2 tiny in float32; two of them are summed)
        ok = err <= 8 * RTOL[dtype] * np.abs(w) + 8 * tiny
        assert ok.all(), (name, kf[~ok][:3], ki[~ok][:3], g[~ok][:3], w[~ok][:3])
    nan = _lstm_gates(np.array([np.nan, 1.0], dtype), np.array([1.0, np.nan], dtype))
    assert np.isnan(nan).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_exp_saturates_instead_of_overflowing(dtype):
    big = np.array([-1e4, 1e4, np.finfo(dtype).max], dtype=dtype)
    e = _apply(big, 0)
    assert np.all(np.isfinite(e)) and e[0] >= 0
    s = _apply(big, 1)
    assert np.all((s >= 0) & (s <= 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormal(dtype):
    tiny = np.finfo(dtype).tiny
    x = np.array([tiny, tiny / 4, -tiny / 4, -tiny, 1.0, 0.0], dtype=dtype)
    assert np.array_equal(_apply(x, 4), np.array([tiny, 0, 0, -tiny, 1, 0], dtype=dtype))


@pytest.mark.parametrize("cell", ["min_gru", "min_lstm", "scan"] + (["lru"] if HARDWARE_FTZ else []))
def test_backward_leaves_no_subnormals(cell):
    """A loss on the last step only: gradients decay through ~300 steps into the subnormal range."""
    rng = np.random.default_rng(0)
    B, T, D = 2, 300, 32
    x = [rng.standard_normal((B, T, D)).astype(np.float32) + 3 for _ in range(3)]
    if cell == "min_gru":
        h = mincore.min_gru(x[0], x[1])
        dh = np.zeros_like(h)
        dh[:, -1] = 1
        grads = mincore.min_gru_backward(x[0], x[1], h, dh)
    elif cell == "min_lstm":
        h = mincore.min_lstm(x[0] - 6, x[1], x[2])
        dh = np.zeros_like(h)
        dh[:, -1] = 1
        grads = mincore.min_lstm_backward(x[0] - 6, x[1], x[2], h, dh)
    elif cell == "scan":
        a = np.full((B, T, D), 0.5, np.float32)
        h = mincore.scan(a, x[1])
        dh = np.zeros_like(h)
        dh[:, -1] = 1
        grads = mincore.scan_backward(a, h, dh)
    else:  # |lam| = 0.7: G_t ~ 0.7^(T-t) passes 1e-38 about 250 steps before the loss
        lam = (0.7 * np.exp(1j * rng.uniform(0, np.pi, D))).astype(np.complex64)
        bu = (x[1] + 1j * x[2]).astype(np.complex64)
        h = mincore.lru_scan(lam, bu)
        dh = np.zeros_like(h)
        dh[:, -1] = 1
        dlam, dbu, dh0 = mincore.lru_scan_backward(lam, h, dh)
        grads = [part for g in (dbu, dlam, dh0) for part in (g.real, g.imag)]
    tiny = np.finfo(np.float32).tiny
    for g in grads:
        assert not np.any((g != 0) & (np.abs(g) < tiny))
        assert np.all(np.isfinite(g))
    assert np.count_nonzero(grads[0][:, -1]) > 0  # the gradient near the loss survives


def test_preallocated_outputs_are_written_in_place():
    rng = np.random.default_rng(1)
    k, v, dh = (rng.standard_normal((3, 9, 20)).astype(np.float32) for _ in range(3))
    h0 = rng.standard_normal((3, 20)).astype(np.float32)
    h = np.full_like(k, np.nan)
    assert numba_cpu.min_gru(k, v, h0, False, out=h) is h
    np.testing.assert_array_equal(h, mincore.min_gru(k, v, h0))
    out = (np.full_like(k, np.nan), np.full_like(k, np.nan), np.full_like(h0, np.nan))
    got = numba_cpu.min_gru_backward(k, v, h, dh, h0, False, out=out)
    assert all(a is b for a, b in zip(got, out, strict=True))
    for a, b in zip(got, mincore.min_gru_backward(k, v, h, dh, h0), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not HARDWARE_FTZ, reason="MXCSR exists on x86-64 only (elsewhere the kernels flush in software)")
def test_backward_kernels_leave_the_callers_float_mode_alone():
    """The backward jobs set FTZ (numba_fpenv) and must restore it: afterwards NumPy in this thread
    still produces subnormals, and the MXCSR reads as before."""
    from numba import njit

    from mincore.kernels.numba_fpenv import get_mxcsr

    read = njit(lambda: get_mxcsr())
    before = read()
    rng = np.random.default_rng(0)
    k, v, dh = (rng.standard_normal((4, 33, 40)).astype(np.float32) for _ in range(3))
    mincore.min_gru_backward(k, v, mincore.min_gru(k, v), dh)
    assert read() & 0x8040 == before & 0x8040 == 0
    tiny = np.finfo(np.float32).tiny
    assert np.float32(tiny) / np.float32(4) != 0  # still gradual underflow in the caller


def test_subnormal_inputs_are_read_as_they_are():
    """Hardware flushing covers what the kernels compute, not their inputs: g'(v) is 1/4 just below 0
    and 1 at 0, so reading v = -3.6e-41 as zero (DAZ) would make dv 4x too large (a hypothesis find)."""
    k = np.zeros((1, 3, 2), np.float32)
    v = np.full((1, 3, 2), -3.6e-41, np.float32)
    dh = np.ones_like(k)
    h = mincore.min_gru(k, v, log_space=True)
    got = mincore.min_gru_backward(k, v, h, dh, log_space=True)
    want = mincore.min_gru_backward(k, v, h, dh, log_space=True, engine="numpy")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)
