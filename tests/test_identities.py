"""Identities every engine must satisfy, each checked against an independent computation:
a = 1 gives cumsum(b); a = 0 gives b; splitting T at any k and carrying h[:, k-1] equals one pass
(for every cell); reverse equals flip-scan-flip; *_step applied T times equals the parallel form;
T = 0 gives empty (B, 0, D) results and zero dh0 / dlam."""

from __future__ import annotations

import numpy as np
import pytest
import strategies as S
import tolerances as tl
from hypothesis import given
from hypothesis import strategies as st
from test_scan_engines import run, up
from tolerances import assert_close, log_space_extent, tolerance

import mincore
from mincore.backend import get_array_module
from mincore.kernels import gates


def _close(backend, got, want, dtype, what, extent=0.0, scale=None):
    assert_close(got, want, tolerance(backend.engine, dtype), f"{backend.engine} {what}", extent, scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_unit_gates_give_cumsum(backend, dtype, data):
    backend.skip_unless_dtype(dtype)
    shape = data.draw(S.shapes(), "shape")
    b, h0 = data.draw(S.values(shape, "signed", dtype)), data.draw(S.values(shape[::2], "signed", dtype))
    a = np.ones(shape, dtype)
    h = run(backend, mincore.scan, a, b, h0)
    _close(backend, h, np.cumsum(up(b), axis=1) + up(h0)[:, None], dtype, "a = 1", log_space_extent(a),
           lambda: tl.scan_scales(up(a), up(b), up(h0)))


@given(data=st.data())
def test_zero_gates_give_b(backend, data):
    if backend.positive_gates:
        pytest.skip(f"engine {backend.engine!r} takes log(a): a = 0 is outside its domain")
    shape = data.draw(S.shapes(), "shape")
    b, h0 = data.draw(S.values(shape, "signed")), data.draw(S.initial_states(shape))
    h = run(backend, mincore.scan, np.zeros(shape), b, h0)
    np.testing.assert_array_equal(h, b)  # 0 * h + b is exact in any order of evaluation


def _cell(name, data, dtype, shape):
    """(function, sequence inputs, keyword flags, extent, scale(h0)) for one cell, drawn; extent and
    the magnitude computation scale(h0) feed the tolerance (tests/tolerances.py)."""
    def pre():
        return data.draw(S.values(shape, "preact", dtype))

    def sig():
        return data.draw(S.values(shape, "signed", dtype))

    if name == "scan":
        a = data.draw(S.values(shape, "gate", dtype))
        b = sig()
        return mincore.scan, (a, b), {}, log_space_extent(a), lambda h0: tl.scan_scales(up(a), up(b), up(h0))
    if name == "min_gru":
        k, v, ls = pre(), sig(), data.draw(st.booleans(), "log_space")
        ab = gates.min_gru_coeffs(np, up(k), up(v), ls)
        return mincore.min_gru, (k, v), {"log_space": ls}, log_space_extent(ab[0]), \
            lambda h0: tl.scan_scales(*ab, up(h0))
    if name == "min_lstm":
        kf, ki, v = pre(), pre(), sig()
        kw = {"normalize": data.draw(st.booleans()), "log_space": data.draw(st.booleans())}
        ab = gates.min_lstm_coeffs(np, up(kf), up(ki), up(v), kw["normalize"], kw["log_space"])
        return mincore.min_lstm, (kf, ki, v), kw, log_space_extent(ab[0]), \
            lambda h0: tl.scan_scales(*ab, up(h0))
    cdt = np.result_type(dtype, 1j).name
    lam = data.draw(S.lambdas(shape[2], cdt), "lam")

    def lru(bu, h0=None, engine=None):  # lam follows bu onto the device (`run` moves the sequences only)
        return mincore.lru_scan(get_array_module(bu).asarray(lam), bu, h0, engine=engine)

    bu = data.draw(S.complex_values(shape, cdt))
    return lru, (bu,), {}, log_space_extent(np.broadcast_to(lam, shape)), \
        lambda h0: tl.scan_scales(up(lam), up(bu), up(h0))


CELLS = ["scan", "min_gru", "min_lstm", "lru_scan"]


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_chunking_carries_state(backend, cell, data):
    """h over [0, T) equals h over [0, k) then [k, T) started from the carried state h[:, k-1]."""
    dtype = data.draw(S.dtypes, "dtype")
    if np.dtype(dtype).name not in backend.dtypes:
        dtype = backend.dtypes[0]
    shape = data.draw(S.shapes(t=st.integers(0, 60)), "shape")
    fn, seqs, kw, extent, scale = _cell(cell, data, dtype, shape)
    k = data.draw(st.integers(0, shape[1]), "k")
    h0 = data.draw(S.initial_states(shape, seqs[-1].dtype.name, complex_=cell == "lru_scan"), "h0")
    whole = run(backend, fn, *seqs, h0, **kw)
    first = run(backend, fn, *[x[:, :k].copy() for x in seqs], h0, **kw)
    carry = first[:, -1].copy() if k > 0 else h0
    second = run(backend, fn, *[x[:, k:].copy() for x in seqs], carry, **kw)
    _close(backend, np.concatenate([first, second], axis=1), whole, dtype, f"{cell} split at {k}", extent,
           lambda: scale(h0))


@given(data=st.data())
def test_reverse_is_flip_scan_flip(backend, data):
    dtype = backend.dtypes[-1] if "float64" not in backend.dtypes else "float64"
    shape = data.draw(S.shapes(), "shape")
    a, b = data.draw(S.values(shape, "gate", dtype)), data.draw(S.values(shape, "signed", dtype))
    h0, dh = data.draw(S.initial_states(shape, dtype)), data.draw(S.values(shape, "signed", dtype))
    flip = lambda x: np.ascontiguousarray(x[:, ::-1])  # noqa: E731
    h = run(backend, mincore.scan, a, b, h0, reverse=True)
    _close(backend, h, flip(run(backend, mincore.scan, flip(a), flip(b), h0)), dtype, "reverse")
    got = run(backend, mincore.scan_backward, a, h, dh, h0, reverse=True)
    want = run(backend, mincore.scan_backward, flip(a), flip(h), flip(dh), h0)
    for g, w, name in zip(got, (flip(want[0]), flip(want[1]), want[2]), ("da", "db", "dh0"), strict=True):
        _close(backend, g, w, dtype, f"reverse backward {name}")


@pytest.mark.parametrize("cell", ["min_gru", "min_lstm"])
@given(data=st.data())
def test_step_equals_parallel(backend, cell, data):
    """*_step applied T times (the constant-memory inference form) equals the parallel form."""
    dtype = "float64" if "float64" in backend.dtypes else backend.dtypes[0]
    shape = data.draw(S.shapes(t=st.integers(0, 40)), "shape")
    fn, seqs, kw, extent, scale = _cell(cell, data, dtype, shape)
    h0 = data.draw(S.values(shape[::2], "signed", dtype), "h0")
    step = getattr(mincore, f"{cell}_step")
    state, states = h0, []
    for t in range(shape[1]):
        state = step(*[np.ascontiguousarray(x[:, t]) for x in seqs], state, **kw)
        states.append(state)
    want = np.stack(states, axis=1) if states else np.zeros(shape, dtype)
    _close(backend, run(backend, fn, *seqs, h0, **kw), want, dtype, f"{cell}_step x T", extent,
           lambda: scale(h0))


def test_empty_sequences(backend):
    """T = 0: every function returns (B, 0, D) arrays; dh0 and dlam are zeros."""
    dtype = backend.dtypes[-1]
    B, D = 2, 3
    e = np.zeros((B, 0, D), dtype)
    h0 = np.ones((B, D), dtype)
    cd = np.result_type(dtype, 1j)
    ec, lam, c0 = e.astype(cd), np.full(D, 0.5 + 0.1j, cd), h0.astype(cd)
    outs = {
        "scan": run(backend, mincore.scan, e + 1, e, h0),
        "scan_backward": run(backend, mincore.scan_backward, e + 1, e, e, h0),
        "min_gru": run(backend, mincore.min_gru, e, e, h0),
        "min_gru_backward": run(backend, mincore.min_gru_backward, e, e, e, e, h0),
        "min_lstm": run(backend, mincore.min_lstm, e, e, e, h0),
        "min_lstm_backward": run(backend, mincore.min_lstm_backward, e, e, e, e, e, h0),
        "lru_scan": run(backend, mincore.lru_scan, lam, ec, c0),
        "lru_scan_backward": run(backend, mincore.lru_scan_backward, lam, ec, ec, c0),
    }
    for name, out in outs.items():
        out = out if isinstance(out, tuple) else (out,)
        for x in out:
            if x.ndim == 3:
                assert x.shape == (B, 0, D), f"{backend.engine} {name}: shape {x.shape}"
            else:  # dh0 (B, D) or dlam (D,): no step saw h0, so its gradient is zero
                assert x.shape in ((B, D), (D,)) and not np.any(x), f"{backend.engine} {name}: {x}"
