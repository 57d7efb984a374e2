"""Every registered engine against the oracle (engine "numpy" run in float64) on drawn shapes,
T in {0, 1, 2, 17, 1031} and short random lengths, drawn h0 (or None), both dtypes, every flag:
forward and backward of scan, min_gru, min_lstm and lru_scan. Tolerances: tests/tolerances.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import strategies as S
import tolerances as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import assert_close, log_space_extent, tolerance

import mincore
from mincore.kernels import gates


def up(x):
    """float64 / complex128 copy for the oracle (None stays None)."""
    if x is None:
        return None
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def run(backend, fn, *arrays, **kw):
    """Call `fn` on `backend`'s arrays with engine=backend.engine; results come back as NumPy."""
    out = fn(*[None if x is None else backend.to_device(x) for x in arrays], engine=backend.engine, **kw)
    return tuple(backend.to_host(o) for o in out) if isinstance(out, tuple) else backend.to_host(out)


def oracle(fn, *arrays, **kw):
    return fn(*[up(x) for x in arrays], engine="numpy", **kw)


def flip(x):
    return None if x is None else np.ascontiguousarray(x[:, ::-1])


def check(backend, got, want, dtype, what, extent=0.0, scales=None):
    """Each output within the engine's tolerance; `scales` is a zero-argument callable giving the
    magnitude computation (tests/tolerances.py), called only when the plain check fails."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    tol, cache = tolerance(backend.engine, dtype), []

    def scale(i):
        if not cache:
            mags = scales()
            cache.append(mags if isinstance(mags, tuple) else (mags,))
        return cache[0][i]

    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.dtype(dtype), f"{what}[{i}]: dtype {g.dtype}, expected {dtype}"
        assert_close(g, w, tol, f"{backend.engine} {what}[{i}]", extent,
                     None if scales is None else (lambda i=i: scale(i)))


# ------------------------------------------------------------------------------------------
# one case per op: draw inputs of length T from `t`, run forward and backward, compare


def _case_scan(backend, data, dtype, t, reverse):
    shape = data.draw(S.shapes(t=t), "shape")
    a, b = data.draw(S.values(shape, "gate", dtype)), data.draw(S.values(shape, "signed", dtype))
    h0 = data.draw(S.initial_states(shape, dtype), "h0")
    dh = data.draw(S.values(shape, "signed", dtype), "dh")
    f = flip if reverse else up  # into (and back out of) the order the scan runs in
    extent = log_space_extent(up(a), dtype)
    mags = functools.cache(lambda: tl.scan_scales(up(f(a)), up(f(b)), up(h0), up(f(dh))))
    h = run(backend, mincore.scan, a, b, h0, reverse=reverse)
    want = oracle(mincore.scan, a, b, h0, reverse=reverse)
    check(backend, h, want, dtype, "scan", extent, lambda: f(mags()[0]))
    got = run(backend, mincore.scan_backward, a, h, dh, h0, reverse=reverse)
    want = oracle(mincore.scan_backward, a, want, dh, h0, reverse=reverse)
    check(backend, got, want, dtype, "scan_backward", extent,
          lambda: (f(mags()[1][0]), f(mags()[1][1]), mags()[1][2]))


def _cell_inputs(data, dtype, t, n_pre):
    shape = data.draw(S.shapes(t=t), "shape")
    pre = [data.draw(S.values(shape, "preact", dtype)) for _ in range(n_pre)]
    v = data.draw(S.values(shape, "signed", dtype))
    return pre, v, data.draw(S.initial_states(shape, dtype), "h0"), \
        data.draw(S.values(shape, "signed", dtype), "dh")


def _case_min_gru(backend, data, dtype, t, log_space):
    (k,), v, h0, dh = _cell_inputs(data, dtype, t, 1)
    extent = log_space_extent(gates.min_gru_coeffs(np, up(k), up(v), log_space)[0], dtype)
    mags = functools.cache(lambda: tl.min_gru_scales(up(k), up(v), up(h0), up(dh), log_space))
    h = run(backend, mincore.min_gru, k, v, h0, log_space=log_space)
    want = oracle(mincore.min_gru, k, v, h0, log_space=log_space)
    check(backend, h, want, dtype, "min_gru", extent, lambda: mags()[0])
    got = run(backend, mincore.min_gru_backward, k, v, h, dh, h0, log_space=log_space)
    want = oracle(mincore.min_gru_backward, k, v, want, dh, h0, log_space=log_space)
    check(backend, got, want, dtype, "min_gru_backward", extent, lambda: mags()[1])


def _case_min_lstm(backend, data, dtype, t, normalize, log_space):
    (kf, ki), v, h0, dh = _cell_inputs(data, dtype, t, 2)
    kw = dict(normalize=normalize, log_space=log_space)
    extent = log_space_extent(gates.min_lstm_coeffs(np, up(kf), up(ki), up(v), normalize, log_space)[0], dtype)
    mags = functools.cache(lambda: tl.min_lstm_scales(*map(up, (kf, ki, v, h0, dh)), normalize, log_space))
    h = run(backend, mincore.min_lstm, kf, ki, v, h0, **kw)
    want = oracle(mincore.min_lstm, kf, ki, v, h0, **kw)
    check(backend, h, want, dtype, "min_lstm", extent, lambda: mags()[0])
    got = run(backend, mincore.min_lstm_backward, kf, ki, v, h, dh, h0, **kw)
    want = oracle(mincore.min_lstm_backward, kf, ki, v, want, dh, h0, **kw)
    check(backend, got, want, dtype, "min_lstm_backward", extent, lambda: mags()[1])


def _case_lru_scan(backend, data, dtype, t):
    dtype = np.result_type(dtype, 1j).name  # complex64 / complex128
    shape = data.draw(S.shapes(t=t), "shape")
    lam = data.draw(S.lambdas(shape[2], dtype), "lam")
    bu, dh = data.draw(S.complex_values(shape, dtype)), data.draw(S.complex_values(shape, dtype))
    h0 = data.draw(S.initial_states(shape, dtype, complex_=True), "h0")
    extent = log_space_extent(np.broadcast_to(up(lam), shape), dtype)
    mags = functools.cache(lambda: tl.lru_scales(up(lam), up(bu), up(h0), up(dh)))
    h = run(backend, mincore.lru_scan, lam, bu, h0)
    want = oracle(mincore.lru_scan, lam, bu, h0)
    check(backend, h, want, dtype, "lru_scan", extent, lambda: mags()[0])
    got = run(backend, mincore.lru_scan_backward, lam, h, dh, h0)
    want = oracle(mincore.lru_scan_backward, lam, want, dh, h0)
    check(backend, got, want, dtype, "lru_scan_backward", extent, lambda: mags()[1])


# ------------------------------------------------------------------------------------------
# drawn lengths (0, 1, 2, 17, LONG_T or 3..40), every flag combination, both precisions

dtypes = pytest.mark.parametrize("dtype", ["float64", "float32"])


@dtypes
@pytest.mark.parametrize("reverse", [False, True])
@given(data=st.data())
def test_scan(backend, dtype, reverse, data):
    backend.skip_unless_dtype(dtype)
    _case_scan(backend, data, dtype, S.lengths, reverse)


@dtypes
@pytest.mark.parametrize("log_space", [False, True])
@given(data=st.data())
def test_min_gru(backend, dtype, log_space, data):
    backend.skip_unless_dtype(dtype)
    _case_min_gru(backend, data, dtype, S.lengths, log_space)


@dtypes
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("log_space", [False, True])
@given(data=st.data())
def test_min_lstm(backend, dtype, normalize, log_space, data):
    backend.skip_unless_dtype(dtype)
    _case_min_lstm(backend, data, dtype, S.lengths, normalize, log_space)


@dtypes
@given(data=st.data())
def test_lru_scan(backend, dtype, data):
    backend.skip_unless_dtype(dtype)
    _case_lru_scan(backend, data, dtype, S.lengths)


CASES = {"scan": (_case_scan, ["reverse"]), "min_gru": (_case_min_gru, ["log_space"]),
         "min_lstm": (_case_min_lstm, ["normalize", "log_space"]), "lru_scan": (_case_lru_scan, [])}


@pytest.mark.parametrize("log_space", [False, True])
def test_min_gru_out_is_written_and_returned(backend, log_space):
    """out= (preallocated results): the same values as without it, written into and returned as the
    given arrays, on every engine (numba writes directly, the others copy)."""
    rng = np.random.default_rng(7)
    dtype = backend.dtypes[0]
    k, v, dh = (backend.to_device(rng.standard_normal((3, 37, 20)).astype(dtype)) for _ in range(3))
    h0 = backend.to_device(rng.standard_normal((3, 20)).astype(dtype))
    xp = mincore.get_array_module(k)
    kw = dict(log_space=log_space, engine=backend.engine)
    h = xp.full_like(k, np.nan)
    assert mincore.min_gru(k, v, h0, out=h, **kw) is h
    np.testing.assert_array_equal(backend.to_host(h), backend.to_host(mincore.min_gru(k, v, h0, **kw)))
    outs = (xp.full_like(k, np.nan), xp.full_like(k, np.nan), xp.full_like(h0, np.nan))
    got = mincore.min_gru_backward(k, v, h, dh, h0, out=outs, **kw)
    assert all(g is o for g, o in zip(got, outs, strict=True))
    for g, w in zip(got, mincore.min_gru_backward(k, v, h, dh, h0, **kw), strict=True):
        np.testing.assert_array_equal(backend.to_host(g), backend.to_host(w))


@pytest.mark.parametrize("T", S.SPECIAL_T)
@pytest.mark.parametrize("op", list(CASES))
@settings(max_examples=4)
@given(data=st.data())
def test_special_lengths(backend, op, T, data):
    """Every T in {0, 1, 2, 17, LONG_T} for sure (a drawn test may miss one); dtype and flags drawn."""
    case, flags = CASES[op]
    dtype = data.draw(st.sampled_from(backend.dtypes), "dtype")
    case(backend, data, dtype, st.just(T), **{f: data.draw(st.booleans(), f) for f in flags})


@given(data=st.data())
def test_scan_any_sign_gates(backend, data):
    """Gates of any sign, zero included, for engines that do not need a > 0."""
    if backend.positive_gates:
        pytest.skip(f"engine {backend.engine!r} needs a > 0 (tests/test_errors.py checks the error)")
    shape = data.draw(S.shapes(t=st.integers(0, 40)), "shape")
    a = data.draw(S.values(shape, "signed", "float64")) / 3  # |a| up to 1.3: growth stays bounded
    b, h0 = data.draw(S.values(shape, "signed", "float64")), data.draw(S.initial_states(shape))
    check(backend, run(backend, mincore.scan, a, b, h0), oracle(mincore.scan, a, b, h0), "float64",
          "scan", 0.0, lambda: tl.scan_scales(a, b, h0))


@pytest.mark.parametrize("op", ["scan", "min_gru", "min_lstm"])
def test_float32_long_sequence(backend, op):
    """The issue's target at T = 4096 in float32: 1e-5 relative for every engine, flat (the log-space
    engine meets it through its blocks of CHUNK steps: tests/tolerances.py)."""
    backend.skip_unless_dtype("float32")
    rng = np.random.default_rng(4096)
    shape = (2, 4096, 32)

    def draw(scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    h0 = draw()[:, 0].copy()
    if op == "scan":
        args = (rng.uniform(0.5, 1.0, shape).astype(np.float32), draw(), h0)
    elif op == "min_gru":
        args = (draw(), draw(), h0)
    else:
        args = (draw(), draw(), draw(), h0)
    fn = getattr(mincore, op)
    check(backend, run(backend, fn, *args), oracle(fn, *args), "float32", op, extent=0.0)


def test_logspace_generic_logcumsumexp(monkeypatch):
    """The array-module-generic path (CuPy has no logaddexp.accumulate): force the log-depth scan
    on NumPy and compare with the oracle, -inf entries (zero b) included."""
    from mincore.kernels import logspace

    monkeypatch.setattr(logspace, "logcumsumexp", lambda xp, x: logspace._logaddexp_doubling(
        xp, x, lambda xp_, u, v: xp_.logaddexp(u, v)))
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.01, 1, (2, 300, 3)), rng.standard_normal((2, 300, 3))
    h0 = rng.standard_normal((2, 3))
    b[:, ::5] = 0.0
    got = mincore.scan(a, b, h0, reverse=True, engine="logspace")
    assert_close(got, mincore.scan(a, b, h0, reverse=True, engine="numpy"), tolerance("logspace", "float64"),
                 "logspace doubling", log_space_extent(a), lambda: flip(tl.scan_scales(flip(a), flip(b), h0)))
