"""Bad input raises ValueError/TypeError whose message names the argument (and what it got), for the
public API. Validation sits in front of every engine, so most cases run once (engine "numpy");
cases an engine decides itself (dtypes, a > 0) run per engine."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from tolerances import assert_close, log_space_extent, tolerance

import mincore

B, T, D = 2, 5, 3
rng = np.random.default_rng(0)


def seq(dtype="float64", shape=(B, T, D)):
    return rng.uniform(0.1, 0.9, shape).astype(dtype)


def cseq(dtype="complex128", shape=(B, T, D)):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@contextlib.contextmanager
def raises(exc, *names):
    """pytest.raises whose message must also contain every string in `names` (an argument is named
    as "a:", the prefix mincore.checks gives every message, so a stray letter never matches)."""
    with pytest.raises(exc) as info:
        yield info
    for n in names:
        assert n in str(info.value), f"message {str(info.value)!r} does not name {n!r}"


# (call, exception, strings the message must contain)
def _cases():
    a, b, h = seq(), seq(), seq()
    yield "b shape", lambda: mincore.scan(a, seq(shape=(B, T, D + 1))), ValueError, ["b:", "(2, 5, 4)"]
    yield "T mismatch", lambda: mincore.min_gru(a, seq(shape=(B, T + 1, D))), ValueError, ["v:"]
    yield "a ndim", lambda: mincore.scan(a[0].copy(), b), ValueError, ["a:", "3 dimensions"]
    yield "k ndim", lambda: mincore.min_gru(seq(shape=(B, T, D, 1)), b), ValueError, ["k:"]
    yield "int a", lambda: mincore.scan(np.ones((B, T, D), np.int64), b), TypeError, ["a:", "int64"]
    yield "int v", lambda: mincore.min_gru(a, np.ones((B, T, D), np.int32)), TypeError, ["v:", "int32"]
    yield "mixed", lambda: mincore.scan(a, seq("float32")), TypeError, ["b:", "float32", "float64"]
    yield "mixed lstm", lambda: mincore.min_lstm(a, a, seq("float32")), TypeError, ["v:", "float32"]
    yield "float16", lambda: mincore.scan(a.astype(np.float16), b.astype(np.float16)), TypeError, ["a:", "float16"]
    yield "a masked", lambda: mincore.scan(np.ma.masked_less(a, 0), b), TypeError, ["a:", "masked"]
    yield "h0 masked", lambda: mincore.scan(a, b, np.ma.masked_less(seq(shape=(B, D)), 0)), TypeError, \
        ["h0:", "masked"]
    yield "h0 shape", lambda: mincore.scan(a, b, seq(shape=(B, D + 1))), ValueError, ["h0:", "(2, 4)"]
    yield "h0 ndim", lambda: mincore.min_gru(a, b, seq(shape=(B, 1, D))), ValueError, ["h0:"]
    yield "h0 dtype", lambda: mincore.scan(a, b, seq("float32", (B, D))), TypeError, ["h0:", "float32"]
    yield "list", lambda: mincore.scan(a.tolist(), b), TypeError, ["a:", "list"]
    yield "dh shape", lambda: mincore.scan_backward(a, h, seq(shape=(B, T, 1))), ValueError, ["dh:"]
    yield "h shape", lambda: mincore.min_gru_backward(a, b, seq(shape=(1, T, D)), h), ValueError, ["h:"]
    yield "reverse=1", lambda: mincore.scan(a, b, reverse=1), TypeError, ["reverse:"]
    yield "log_space='yes'", lambda: mincore.min_gru(a, b, log_space="yes"), TypeError, ["log_space:"]
    yield "normalize=None", lambda: mincore.min_lstm(a, a, b, normalize=None), TypeError, ["normalize:"]
    a0, b0, h0 = a[:, 0].copy(), b[:, 0].copy(), h[:, 0].copy()
    yield "step log_space", lambda: mincore.min_gru_step(a0, b0, h0, log_space=0), \
        TypeError, ["log_space:"]
    yield "step shape", lambda: mincore.min_gru_step(a[:, 0].copy(), b[0].copy(), h[:, 0].copy()), \
        ValueError, ["v_t:"]
    yield "step ndim", lambda: mincore.min_lstm_step(a, a, a, h[:, 0].copy()), ValueError, ["kf_t:"]
    e3, e2 = np.empty((B, T, D)), np.empty((B, D))
    yield "out aliases k", lambda: mincore.min_gru(a, b, out=a), ValueError, ["out:", "input k"]
    yield "out shape", lambda: mincore.min_gru(a, b, out=seq(shape=(B, T, D + 1))), ValueError, ["out:", "(2, 5, 4)"]
    yield "out dtype", lambda: mincore.min_gru(a, b, out=seq("float32")), ValueError, ["out:", "float32"]
    yield "out list", lambda: mincore.min_gru(a, b, out=[e3]), TypeError, ["out:", "list"]
    yield "out strided", lambda: mincore.min_gru(a, b, out=seq(shape=(B, 2 * T, D))[:, ::2]), ValueError, \
        ["out:", "contiguous"]
    ro = np.empty((B, T, D))
    ro.flags.writeable = False
    yield "out read-only", lambda: mincore.min_gru(a, b, out=ro), ValueError, ["out:", "read-only"]
    buf = np.empty((2, B, T, D))
    yield "bwd outs overlap", lambda: mincore.min_gru_backward(a, b, h, h, out=(buf[0], buf[0][:], e2)), \
        ValueError, ["out:", "dk", "dv", "share memory"]
    yield "bwd out count", lambda: mincore.min_gru_backward(a, b, h, h, out=(e3, e3.copy())), TypeError, \
        ["out:", "3 arrays"]
    yield "bwd out dh0", lambda: mincore.min_gru_backward(a, b, h, h, out=(e3, e3.copy(), e3.copy())), ValueError, \
        ["out (dh0):", "2 dimensions"]
    yield "bwd out same", lambda: mincore.min_gru_backward(a, b, h, h, out=(e3, e3, e2)), ValueError, \
        ["out:", "distinct"]
    yield "bwd out aliases dh", lambda: mincore.min_gru_backward(a, b, h, seq(), out=(h, e3, e2)), ValueError, \
        ["out (dk):", "input h"]
    lam, bu = np.full(D, 0.5 + 0.5j), cseq()
    yield "real bu", lambda: mincore.lru_scan(lam, seq()), TypeError, ["bu:"]
    yield "lam shape", lambda: mincore.lru_scan(np.full(D + 1, 0.5j), bu), ValueError, ["lam:", "(4,)"]
    yield "lam dtype", lambda: mincore.lru_scan(lam.astype(np.complex64), bu), ValueError, ["lam:"]
    yield "lru h0", lambda: mincore.lru_scan(lam, bu, cseq(shape=(B, D + 1))), ValueError, ["h0:"]
    yield "lru dh", lambda: mincore.lru_scan_backward(lam, bu, cseq("complex64")), TypeError, ["dh:"]
    yield from _out_cases(a, b, h, lam, bu)


def _out_cases(a, b, h, lam, bu):
    """out= of every cell other than min_gru (whose cases are above): validated as min_gru's."""
    e3, e2 = seq(), seq(shape=(B, D))
    yield "scan out aliases a", lambda: mincore.scan(a, b, out=a), ValueError, ["out:", "input a"]
    yield "scan out dtype", lambda: mincore.scan(a, b, out=seq("float32")), ValueError, ["out:", "float32"]
    yield "scan bwd out count", lambda: mincore.scan_backward(a, h, b, out=(e3, e3.copy())), TypeError, \
        ["out:", "3 arrays"]
    yield "scan bwd reverse out shape", lambda: mincore.scan_backward(
        a, h, b, reverse=True, out=(e3, seq(shape=(B, T + 1, D)), e2)), ValueError, ["out (db):", "(2, 6, 3)"]
    yield "lstm out aliases v", lambda: mincore.min_lstm(a, a, b, out=b), ValueError, ["out:", "input v"]
    yield "lstm out list", lambda: mincore.min_lstm(a, a, b, out=[e3]), TypeError, ["out:", "list"]
    yield "lstm bwd out same", lambda: mincore.min_lstm_backward(a, a, b, h, h, out=(e3, e3, seq(), e2)), \
        ValueError, ["out:", "dkf", "dki", "distinct"]
    yield "lstm bwd out dh0", lambda: mincore.min_lstm_backward(a, a, b, h, h, out=(e3, seq(), seq(), e3)), \
        ValueError, ["out (dh0):", "2 dimensions"]
    yield "lru out real", lambda: mincore.lru_scan(lam, bu, out=seq()), ValueError, ["out:", "complex128"]
    yield "lru bwd out dlam", lambda: mincore.lru_scan_backward(lam, bu, cseq(), out=(cseq(), cseq(), e2)), \
        ValueError, ["out (dlam):", "1 dimensions"]
    yield "lru bwd out aliases lam", lambda: mincore.lru_scan_backward(
        lam, bu, cseq(), out=(lam, cseq(), cseq(shape=(B, D)))), ValueError, ["out (dlam):", "input lam"]


CASES = list(_cases())


@pytest.mark.parametrize("call,exc,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(call, exc, names, monkeypatch):
    monkeypatch.setenv("MINCORE_ENGINE", "numpy")  # engine=None: validation, not engine choice, fails
    with raises(exc, *names):
        call()


def test_unknown_engine():
    with raises(ValueError, "no-such-engine", "numpy"):
        mincore.scan(seq(), seq(), engine="no-such-engine")


def test_unknown_engine_from_environment(monkeypatch):
    monkeypatch.setenv("MINCORE_ENGINE", "warp-drive")
    with raises(ValueError, "warp-drive", "MINCORE_ENGINE"):
        mincore.min_gru(seq(), seq())


@pytest.mark.parametrize("engine", ["cupy", "numba-cuda"])
def test_numpy_array_to_gpu_engine(engine):
    """NumPy arrays given to a GPU engine: a clear error naming the engine, never a silent copy or
    fallback (under the CUDA simulator numba-cuda takes NumPy arrays by design)."""
    if engine == "numba-cuda" and mincore.backend.cudasim_enabled():
        pytest.skip("the CUDA simulator runs numba-cuda on NumPy arrays")
    with pytest.raises((TypeError, RuntimeError)) as info:
        mincore.scan(seq(), seq(), engine=engine)
    assert repr(engine) in str(info.value) or engine in str(info.value), str(info.value)


def test_engine_dtype_support(backend):
    """A dtype the engine does not list in DTYPES is refused with the engine's name."""
    for dtype in ("float32", "float64"):
        if dtype not in backend.dtypes:
            with raises(TypeError, backend.engine, dtype):
                mincore.scan(seq(dtype), seq(dtype), engine=backend.engine)


@pytest.mark.parametrize("bad", [0.0, -0.5, np.nan])
def test_logspace_needs_positive_gates(bad):
    a = seq()
    a[1, 2, 0] = bad
    with raises(ValueError, "a:", "> 0", "logspace"):
        mincore.scan(a, seq(), engine="logspace")
    with raises(ValueError, "a:", "> 0"):
        mincore.scan_backward(a, seq(), seq(), engine="logspace")


def test_logspace_needs_nonzero_lam():
    lam = np.array([0.5, 0.0, 0.3j])
    with raises(ValueError, "lam:", "logspace"):
        mincore.lru_scan(lam, cseq(), engine="logspace")


def test_logspace_saturated_gates_stay_finite():
    """Log-space gates come from the pre-activations: k = +-200 (a or z = e^-200, 0 in float32)
    gives the limits, not log(0) NaNs; the accuracy is the log-space model's, eps (|a*| + sqrt T)
    with |a*| = 200 per saturated step (tests/tolerances.py)."""
    for dtype in ("float32", "float64"):
        k = np.full((1, 4, 2), 200.0, dtype)
        k[:, 1] = -200.0
        v = np.array([1.0, -2.0], dtype) * np.ones((1, 4, 1), dtype)
        h = mincore.min_gru(k, v, engine="logspace")
        want = mincore.min_gru(k.astype(np.float64), v.astype(np.float64), engine="numpy")
        assert_close(h, want, tolerance("logspace", dtype), "saturated min_gru",
                     log_space_extent(np.exp(-np.logaddexp(0, k.astype(np.float64)))))


class _OnlyArrayInterface:
    """An array-like that exposes nothing but __array_interface__ (as some libraries' buffers do)."""

    def __init__(self, x):
        self._x = x
        self.__array_interface__ = x.__array_interface__


def test_any_numpy_layout_is_accepted_and_converted_once():
    """Strided views, Fortran order, big-endian data and __array_interface__-only objects give the same
    results as the C-contiguous native arrays (inputs only: out= must be written in place)."""
    a, b, h0 = seq(shape=(B, T, D)), seq(shape=(B, T, D)), seq(shape=(B, D))
    want = mincore.min_gru(a, b, h0)
    wide, hwide = seq(shape=(B, 2 * T, D)), seq(shape=(B, 2 * D))
    wide[:, ::2], hwide[:, ::2] = a, h0
    fortran = np.asfortranarray(b)
    swapped = b.astype(b.dtype.newbyteorder(">"))
    cases = {"strided": (wide[:, ::2], b, h0), "h0 strided": (a, b, hwide[:, ::2]), "fortran": (a, fortran, h0),
             "big-endian": (a, swapped, h0), "array interface": (_OnlyArrayInterface(a), b, h0)}
    for what, (x, y, s0) in cases.items():
        np.testing.assert_array_equal(mincore.min_gru(x, y, s0), want, err_msg=what)
    grads = mincore.min_gru_backward(a, b, want, b, h0)
    for got, w in zip(mincore.min_gru_backward(wide[:, ::2], fortran, want, swapped, hwide[:, ::2]), grads,
                      strict=True):
        np.testing.assert_array_equal(got, w)
