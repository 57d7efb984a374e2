"""Every engine's backward against float64 central finite differences, as a VJP dot test:

    <dL/dx, u>  vs  (L(x + eps u) - L(x - eps u)) / (2 eps),   L(x) = <h(x), c>

for each input x separately (a, b, h0; k, v, h0; kf, ki, v, h0; lam, bu, h0), u a random direction,
dL/dx from the engine's backward with dh = c. L is evaluated with the oracle (engine "numpy"), so a
wrong backward cannot hide behind a matching wrong forward. Complex (LRU): L = Re <c, h> so dh = c in
PyTorch's convention, <g, u> = Re(conj(g) u), and u perturbs the real and the imaginary part apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st
from test_scan_engines import run

import mincore

EPS = 1e-6  # central differences: truncation ~eps^2, rounding ~1e-16 / eps: both far below RTOL
RTOL = 1e-6
small_shapes = S.shapes(max_b=2, max_d=3, t=st.sampled_from([1, 2, 5, 17]))


def _dot(g, u):
    return float(np.real(np.vdot(g, u)))  # vdot conjugates g: Re(conj(g) u) for complex


def vjp_check(backend, forward, backward, inputs, names, c, data):
    """forward(*inputs, engine=...) -> h; backward(*inputs, h, c, engine=...) -> grads in `names`
    order. Checks <grad_i, u_i> against central differences of <h, c> for every input i."""
    backend.skip_unless_dtype("float64")
    h = run(backend, forward, *inputs)
    grads = run(backend, backward, *inputs, h, c)

    def loss(xs):
        return _dot(c, forward(*xs, engine="numpy"))

    # rounding in L is ~ 1e-16 sum|c h|; the difference quotient divides it by 2 EPS
    atol = 1e-9 * (1.0 + float(np.abs(c).ravel() @ np.abs(h).ravel()))

    for i, (x, g, name) in enumerate(zip(inputs, grads, names, strict=True)):
        assert g.shape == x.shape and g.dtype == x.dtype, f"d{name}: {g.shape} {g.dtype} vs {x.shape}"
        parts = ["real", "imag"] if np.iscomplexobj(x) else ["real"]
        for part in parts:
            u = data.draw(S.values(x.shape, "signed"), f"u_{name}_{part}")
            if not np.any(u):
                continue
            u = u / np.abs(u).max() * (1j if part == "imag" else 1)  # unit size: EPS u is a small step
            plus, minus = list(inputs), list(inputs)
            plus[i], minus[i] = x + EPS * u, x - EPS * u
            fd = (loss(plus) - loss(minus)) / (2 * EPS)
            got = _dot(g, u)
            scale = max(abs(fd), _dot(np.abs(g), np.abs(u)))
            assert abs(got - fd) <= RTOL * scale + atol, \
                f"{backend.engine} d{name} ({part}): <grad, u> = {got:.12g}, finite differences {fd:.12g}"


def _away_from_zero(v, margin=0.05):
    """g(v) has a kink at 0 (slope 1/4 below, 1 above): keep v where central differences are valid."""
    return np.where(v >= 0, v + margin, v - margin)


@pytest.mark.parametrize("reverse", [False, True])
@given(data=st.data())
def test_scan_vjp(backend, reverse, data):
    shape = data.draw(small_shapes, "shape")
    a, b = data.draw(S.values(shape, "gate")), data.draw(S.values(shape, "signed"))
    h0, c = data.draw(S.values(shape[::2], "signed"), "h0"), data.draw(S.values(shape, "signed"), "c")
    a = np.maximum(a, 1e-2)  # a - eps u stays > 0 for the log-space engine

    def fwd(a, b, h0, engine):
        return mincore.scan(a, b, h0, reverse=reverse, engine=engine)

    def bwd(a, b, h0, h, c, engine):
        return mincore.scan_backward(a, h, c, h0, reverse=reverse, engine=engine)

    vjp_check(backend, fwd, bwd, [a, b, h0], ["a", "b", "h0"], c, data)


@pytest.mark.parametrize("log_space", [False, True])
@given(data=st.data())
def test_min_gru_vjp(backend, log_space, data):
    shape = data.draw(small_shapes, "shape")
    k, v = data.draw(S.values(shape, "preact")), data.draw(S.values(shape, "signed"))
    h0, c = data.draw(S.values(shape[::2], "signed"), "h0"), data.draw(S.values(shape, "signed"), "c")
    v = _away_from_zero(v) if log_space else v

    def fwd(k, v, h0, engine):
        return mincore.min_gru(k, v, h0, log_space=log_space, engine=engine)

    def bwd(k, v, h0, h, c, engine):
        return mincore.min_gru_backward(k, v, h, c, h0, log_space=log_space, engine=engine)

    vjp_check(backend, fwd, bwd, [k, v, h0], ["k", "v", "h0"], c, data)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("log_space", [False, True])
@given(data=st.data())
def test_min_lstm_vjp(backend, normalize, log_space, data):
    shape = data.draw(small_shapes, "shape")
    kf, ki = data.draw(S.values(shape, "preact")), data.draw(S.values(shape, "preact"))
    v, c = data.draw(S.values(shape, "signed")), data.draw(S.values(shape, "signed"), "c")
    h0 = data.draw(S.values(shape[::2], "signed"), "h0")
    v = _away_from_zero(v) if log_space else v
    kw = dict(normalize=normalize, log_space=log_space)

    def fwd(kf, ki, v, h0, engine):
        return mincore.min_lstm(kf, ki, v, h0, engine=engine, **kw)

    def bwd(kf, ki, v, h0, h, c, engine):
        return mincore.min_lstm_backward(kf, ki, v, h, c, h0, engine=engine, **kw)

    vjp_check(backend, fwd, bwd, [kf, ki, v, h0], ["kf", "ki", "v", "h0"], c, data)


@given(data=st.data())
def test_lru_scan_vjp(backend, data):
    shape = data.draw(small_shapes, "shape")
    lam = data.draw(S.lambdas(shape[2]), "lam")
    bu, c = data.draw(S.complex_values(shape)), data.draw(S.complex_values(shape), "c")
    h0 = data.draw(S.complex_values((1, *shape[::2])), "h0")[0].copy()

    def fwd(lam, bu, h0, engine):
        return mincore.lru_scan(lam, bu, h0, engine=engine)

    def bwd(lam, bu, h0, h, c, engine):
        return mincore.lru_scan_backward(lam, h, c, h0, engine=engine)

    vjp_check(backend, fwd, bwd, [lam, bu, h0], ["lam", "bu", "h0"], c, data)
