"""Saturated gates and non-finite inputs, every engine against the float64 oracle.

Where exp over- or underflows (|k| ~ 88 in float32, ~ 709 in float64) a gate formed the wrong way goes
subnormal, is flushed to zero, or is the ratio of two clamped exps, and the result is silently wrong:
dh0 = 0 instead of T at k = -88, f' = 1/2 instead of 0.9933 at kf = -90, ki = -95, NaN gradients at
kf = ki = -100. Hypothesis draws pre-activations mixing those edges, |k| up to 1e4 and ordinary values
(strategies.saturated), for every engine (tests/conftest.py's `backend`), both dtypes, every flag,
forward and backward; the CUDA C kernels run the same draws under the host emulation and the
numba-cuda kernels a fixed set under the simulator (tests/cudasim_saturation.py). Named regressions
follow: NaN and inf propagate as in the oracle, the log-space engine's extremes, its complex64 LRU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cuda_emulation as ce
import numpy as np
import pytest
import strategies as S
import tolerances as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scan_engines import check, oracle, run, up

import mincore
from mincore.kernels import gates

dtypes = pytest.mark.parametrize("dtype", ["float64", "float32"])
LENGTHS = st.sampled_from([1, 2, 5, 17, 40, S.LONG_T])


def _gru_case(data, dtype):
    shape = data.draw(S.shapes(max_b=2, max_d=4, t=LENGTHS), "shape")
    k = data.draw(S.saturated(shape, dtype), "k")
    v, dh = data.draw(S.values(shape, "signed", dtype), "v"), data.draw(S.values(shape, "signed", dtype), "dh")
    return k, v, data.draw(S.initial_states(shape, dtype), "h0"), dh


def _lstm_case(data, dtype):
    k, v, h0, dh = _gru_case(data, dtype)
    return k, data.draw(S.saturated(k.shape, dtype), "ki"), v, h0, dh


def _gru_against_oracle(backend, call, k, v, h0, dh, dtype, log_space):
    """call(fn, *arrays, **kw) runs one API function on the engine under test."""
    extent = tl.log_space_extent(gates.min_gru_coeffs(np, up(k), up(v), log_space)[0], dtype)
    mags = lambda: tl.min_gru_scales(up(k), up(v), up(h0), up(dh), log_space)  # noqa: E731
    h = call(mincore.min_gru, k, v, h0, log_space=log_space)
    want = oracle(mincore.min_gru, k, v, h0, log_space=log_space)
    check(backend, h, want, dtype, "min_gru", extent, lambda: mags()[0])
    got = call(mincore.min_gru_backward, k, v, h, dh, h0, log_space=log_space)
    want = oracle(mincore.min_gru_backward, k, v, want, dh, h0, log_space=log_space)
    check(backend, got, want, dtype, "min_gru_backward", extent, lambda: mags()[1])


def _lstm_against_oracle(backend, call, kf, ki, v, h0, dh, dtype, normalize, log_space):
    kw = dict(normalize=normalize, log_space=log_space)
    extent = tl.log_space_extent(gates.min_lstm_coeffs(np, up(kf), up(ki), up(v), normalize, log_space)[0], dtype)
    mags = lambda: tl.min_lstm_scales(*map(up, (kf, ki, v, h0, dh)), normalize, log_space)  # noqa: E731
    h = call(mincore.min_lstm, kf, ki, v, h0, **kw)
    want = oracle(mincore.min_lstm, kf, ki, v, h0, **kw)
    check(backend, h, want, dtype, "min_lstm", extent, lambda: mags()[0])
    got = call(mincore.min_lstm_backward, kf, ki, v, h, dh, h0, **kw)
    want = oracle(mincore.min_lstm_backward, kf, ki, v, want, dh, h0, **kw)
    check(backend, got, want, dtype, "min_lstm_backward", extent, lambda: mags()[1])


def _on(backend):
    return lambda fn, *arrays, **kw: run(backend, fn, *arrays, **kw)


@dtypes
@pytest.mark.parametrize("log_space", [False, True])
@given(data=st.data())
def test_min_gru_saturated(backend, dtype, log_space, data):
    backend.skip_unless_dtype(dtype)
    _gru_against_oracle(backend, _on(backend), *_gru_case(data, dtype), dtype, log_space)


@dtypes
@pytest.mark.parametrize("normalize,log_space", [(True, False), (False, False), (True, True), (False, True)])
@given(data=st.data())
def test_min_lstm_saturated(backend, dtype, normalize, log_space, data):
    backend.skip_unless_dtype(dtype)
    _lstm_against_oracle(backend, _on(backend), *_lstm_case(data, dtype), dtype, normalize, log_space)


# ------------------------------------------------------------------------------------------
# the CUDA C kernels (engine "cupy") under the host emulation, on the same draws


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    if ce.CXX is None:
        pytest.skip("no C++ compiler (g++/clang++) on PATH for the CUDA host emulation")
    api = ce.engine(ce.build(tmp_path_factory.getbasetemp().parent / "cuda-emulation"))

    class Emulated:  # the test_scan_engines helpers' view of an engine: its name picks the tolerance
        engine = "cupy"

    def call(fn, *arrays, **kw):  # the engine interface: h0 given, flags positional in API order
        *xs, h0 = arrays
        B, _, D = xs[0].shape
        h0 = np.zeros((B, D), xs[0].dtype) if h0 is None else h0
        return api[fn.__name__](*xs, h0, *kw.values())

    return Emulated(), call


@dtypes
@pytest.mark.parametrize("log_space", [False, True])
@settings(max_examples=6)
@given(data=st.data())
def test_min_gru_saturated_cuda_emulation(emulated, dtype, log_space, data):
    _gru_against_oracle(*emulated, *_gru_case(data, dtype), dtype, log_space)


@dtypes
@pytest.mark.parametrize("normalize,log_space", [(True, False), (False, True)])
@settings(max_examples=6)
@given(data=st.data())
def test_min_lstm_saturated_cuda_emulation(emulated, dtype, normalize, log_space, data):
    _lstm_against_oracle(*emulated, *_lstm_case(data, dtype), dtype, normalize, log_space)


@pytest.mark.cudasim
def test_numba_cuda_saturated_under_the_simulator():
    suite = Path(__file__).with_name("cudasim_saturation.py")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "MINCORE_ENGINE": ""}
    r = subprocess.run([sys.executable, str(suite)], capture_output=True, text=True, env=env, timeout=600,
                       cwd=suite.parent)
    assert r.returncode == 0, f"{suite.name} failed:\n{(r.stdout + r.stderr)[-20000:]}"
    assert "saturated cases passed" in r.stdout, r.stdout[-5000:]


# ------------------------------------------------------------------------------------------
# named regressions (minimal reproductions), every NumPy engine


def _same_nonfinite_and_close(got, want, dtype, what):
    """NaN where the oracle has NaN, the same infinities, and the finite rest within the tolerance."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN at {np.isnan(got)}, oracle {np.isnan(want)}"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]) and not np.isinf(got[~inf]).any(), f"{what}: {got} vs {want}"
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5 if dtype == "float32" else 1e-10, err_msg=what)


@dtypes
def test_min_gru_dh0_through_saturated_retain_gates(backend, dtype):
    """z = sigmoid(k) ~ 1e-38 at k = -88 (float32) or 1e-308 at -709: the retain gate 1 - z is 1, so
    dh0 = sum of dh = T; it came back 0 when sigmoid went subnormal and was flushed."""
    backend.skip_unless_dtype(dtype)
    for k0 in (-88.0, -100.0, -709.0, -750.0, -1e4) if dtype == "float64" else (-88.0, -90.0, -104.0, -1e4):
        k = np.full((1, 4, 1), k0, dtype)
        v = dh = np.ones_like(k)
        h = mincore.min_gru(k, v, engine="numpy")
        dh0 = run(backend, mincore.min_gru_backward, k, v, h, dh)[2]
        np.testing.assert_allclose(dh0.ravel(), [4.0], rtol=1e-6, err_msg=f"k = {k0}")


@pytest.mark.parametrize("dtype,kf,ki", [("float32", -90, -95), ("float64", -750, -800), ("float32", -1e4, -1e4 - 3)])
def test_min_lstm_normalised_gates_far_below_the_exp_range(backend, dtype, kf, ki):
    """f' = sigmoid(softplus(-ki) - softplus(-kf)) = sigmoid(5) = 0.9933 (the ratio of two clamped
    exps gave 1/2), and the backward at the same gates is finite and right (it was NaN)."""
    backend.skip_unless_dtype(dtype)
    kf_, ki_ = np.full((1, 3, 2), kf, dtype), np.full((1, 3, 2), ki, dtype)
    v, dh = np.ones_like(kf_), np.ones_like(kf_)
    h0 = np.full((1, 2), 2.0, dtype)
    _lstm_against_oracle(backend, _on(backend), kf_, ki_, v, h0, dh, dtype, True, False)


@dtypes
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy on the NaN input
def test_nan_and_inf_propagate_as_in_the_oracle(backend, dtype):
    backend.skip_unless_dtype(dtype)
    k = np.zeros((1, 3, 1), dtype)
    v_nan = np.array([1, np.nan, 1], dtype).reshape(1, 3, 1)
    for log_space in (False, True):
        h = run(backend, mincore.min_gru, k, v_nan, log_space=log_space)
        _same_nonfinite_and_close(h, oracle(mincore.min_gru, k, v_nan, log_space=log_space), dtype, "NaN in v")
    h = mincore.min_gru(k, v_nan, engine="numpy", log_space=True)
    dv = run(backend, mincore.min_gru_backward, k, v_nan, h, np.ones_like(k), log_space=True)[1]
    assert np.isnan(dv[0, 1, 0]), f"dv at the NaN is {dv[0, 1, 0]}, expected NaN"
    v_inf = np.array([np.inf, 1], dtype).reshape(1, 2, 1)
    if not backend.positive_gates:  # log space: h = H(b+) - H(b-) is inf - inf once b is infinite
        h = run(backend, mincore.min_gru, k[:, :2], v_inf)
        _same_nonfinite_and_close(h, oracle(mincore.min_gru, k[:, :2], v_inf), dtype, "inf in v")


@dtypes
@pytest.mark.parametrize("k1", [np.inf, -np.inf, 1e30, -1e30, 1e4])
def test_min_gru_extreme_gates_stay_finite_and_right(backend, dtype, k1):
    backend.skip_unless_dtype(dtype)
    k = np.array([0.5, k1, 0.3], dtype).reshape(1, 3, 1)
    v, dh = np.array([1.0, 0.84, 2.0], dtype).reshape(1, 3, 1), np.ones((1, 3, 1), dtype)
    _gru_against_oracle(backend, _on(backend), k, v, None, dh, dtype, False)


@pytest.mark.parametrize("r", [0.5, 0.9, 0.99])
def test_lru_complex64_long_sequence(backend, r):
    """complex64, T = 1031: within 1e-5 of the oracle (the log-space LRU was 5e-3 off at |lam| = 0.5)."""
    backend.skip_unless_dtype("complex64")
    rng = np.random.default_rng(7)
    lam = (r * np.exp(1j * rng.uniform(-np.pi, np.pi, 6))).astype(np.complex64)
    bu = (rng.standard_normal((2, S.LONG_T, 6)) + 1j * rng.standard_normal((2, S.LONG_T, 6))).astype(np.complex64)
    h = run(backend, mincore.lru_scan, lam, bu, None)
    want = oracle(mincore.lru_scan, lam, bu, None)
    tl.assert_close(h, want, tl.Tol(1e-5), f"{backend.engine} lru_scan |lam| = {r}")
