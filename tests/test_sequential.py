"""The sequential GRU / LSTM layers (mincore.layers.GRU / LSTM): gradients vs finite differences (the
input, every weight and bias, h0 and c0), step-by-step equals forward, and equality with torch.nn.GRU /
nn.LSTM with the same weights (outputs, last states, every gradient) where torch is installed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from autograd_check import vjp_dot_test

from mincore import layers
from mincore.autograd import Tensor, ops
from mincore.sequential import GRU, LSTM, gru_op, lstm_op

B, T, D, H = 3, 6, 4, 5


def arrays(n_gates, bias=True, seed=0, scale=0.6):
    """float64 x (B, T, D), w_ih (D, nH), w_hh (H, nH), b_ih, b_hh (nH,) or None, and a state (B, H)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D))
    w_ih, w_hh = scale * rng.standard_normal((D, n_gates * H)), scale * rng.standard_normal((H, n_gates * H))
    b = [scale * rng.standard_normal(n_gates * H) for _ in range(2)] if bias else [None, None]
    return x, w_ih, w_hh, *b, rng.standard_normal((B, H))


def test_exported_by_mincore_layers():
    assert layers.GRU is GRU and layers.LSTM is LSTM
    assert {"GRU", "LSTM", "gru_op", "lstm_op"} <= set(layers.__all__)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_gru_gradients_vs_finite_differences(bias, with_h0):
    x, w_ih, w_hh, b_ih, b_hh, h0 = arrays(3, bias)
    args = [a for a in (x, w_ih, w_hh, b_ih, b_hh) if a is not None] + ([h0] if with_h0 else [])

    def f(*ts):
        ts = list(ts)
        x, w_ih, w_hh = ts[:3]
        b_ih, b_hh = ts[3:5] if bias else (None, None)
        return gru_op(x, w_ih, w_hh, b_ih, b_hh, ts[-1] if with_h0 else None)
    vjp_dot_test(f, *args)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_lstm_gradients_vs_finite_differences(bias, with_state):
    x, w_ih, w_hh, b_ih, b_hh, h0 = arrays(4, bias)
    c0 = np.random.default_rng(5).standard_normal((B, H))
    args = [a for a in (x, w_ih, w_hh, b_ih, b_hh) if a is not None] + ([h0, c0] if with_state else [])

    def f(*ts):
        ts = list(ts)
        x, w_ih, w_hh = ts[:3]
        b_ih, b_hh = ts[3:5] if bias else (None, None)
        h0, c0 = ts[-2:] if with_state else (None, None)
        return lstm_op(x, w_ih, w_hh, b_ih, b_hh, h0, c0)[0]
    vjp_dot_test(f, *args)


def test_each_gradient_alone_vs_finite_differences():
    """The dot test over all inputs at once could hide two errors that cancel: check each alone."""
    x, w_ih, w_hh, b_ih, b_hh, h0 = arrays(4, seed=3)
    c0 = np.random.default_rng(6).standard_normal((B, H))
    for i in range(7):
        vjp_dot_test(lambda *ts: lstm_op(*ts)[0], x, w_ih, w_hh, b_ih, b_hh, h0, c0, wrt=[i], seed=i)
    for i in range(6):
        vjp_dot_test(gru_op, *arrays(3, seed=3), wrt=[i], seed=i)


def layer(cls, bias=True):
    return cls(D, H, bias=bias, rng=np.random.default_rng(2)).to(dtype=np.float64)


@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("given_state", [False, True])
def test_step_by_step_equals_forward(cls, given_state):
    m = layer(cls)
    x, *_, h0 = arrays(4 if cls is LSTM else 3)
    state = None
    if given_state:
        state = (Tensor(h0), Tensor(0.5 * h0[::-1].copy())) if cls is LSTM else Tensor(h0)
    y, last = m(Tensor(x), state)
    ys = []
    for t in range(T):
        y_t, state = m.step(Tensor(x[:, t]), state)
        ys.append(y_t.data)
    np.testing.assert_allclose(np.stack(ys, 1), y.data, rtol=1e-12, atol=1e-13)
    pairs = zip(last, state, strict=True) if cls is LSTM else [(last, state)]
    for a, b in pairs:
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_empty_sequence_returns_the_initial_state(cls):
    m = layer(cls)
    y, last = m(Tensor(np.zeros((B, 0, D))))
    assert y.shape == (B, 0, H)
    for s in (last if cls is LSTM else [last]):
        assert s.shape == (B, H) and not s.data.any()


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_float32_stays_float32_and_saturated_gates_stay_finite(cls):
    """Pre-activations of +-1e4 saturate every gate: no overflow (sigmoid is computed through tanh)."""
    m = cls(D, H, rng=np.random.default_rng(0))
    x = Tensor((1e4 * np.sign(np.random.default_rng(1).standard_normal((B, T, D)))).astype(np.float32),
               requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, _ = m(x)
        ops.sum(y).backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32
    assert np.isfinite(y.data).all() and np.isfinite(x.grad).all()
    assert all(np.isfinite(p.grad).all() and p.grad.dtype == np.float32 for p in m.parameters())


def test_backward_twice_with_retain_graph_gives_the_same_gradients():
    """The VJP must not overwrite the arrays the forward saved."""
    m = layer(LSTM)
    x = Tensor(arrays(4)[0], requires_grad=True)
    y, _ = m(x)
    loss = ops.sum(y * y)
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    x.grad = None
    loss.backward()
    np.testing.assert_array_equal(x.grad, first)


# ------------------------------------------------------------------------------ against PyTorch
def torch_twin(m, torch):
    """torch.nn.GRU / nn.LSTM (float64, batch first) with m's weights (mincore stores them transposed)."""
    cls = torch.nn.LSTM if isinstance(m, LSTM) else torch.nn.GRU
    twin = cls(m.dim, m.hidden, batch_first=True, bias=m.bias_ih is not None).double()
    with torch.no_grad():
        twin.weight_ih_l0.copy_(torch.from_numpy(m.weight_ih.data.T.copy()))
        twin.weight_hh_l0.copy_(torch.from_numpy(m.weight_hh.data.T.copy()))
        if m.bias_ih is not None:
            twin.bias_ih_l0.copy_(torch.from_numpy(m.bias_ih.data))
            twin.bias_hh_l0.copy_(torch.from_numpy(m.bias_hh.data))
    return twin


@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_torch_with_the_same_weights(cls, bias):
    torch = pytest.importorskip("torch")
    m = layer(cls, bias)
    twin = torch_twin(m, torch)
    rng = np.random.default_rng(4)
    x, h0, c0 = rng.standard_normal((B, T, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    u, v = rng.standard_normal((B, T, H)), rng.standard_normal((B, H))  # loss weights of y and h_last

    xs, h0s, c0s = (Tensor(a, requires_grad=True) for a in (x, h0, c0))
    y, last = m(xs, (h0s, c0s) if cls is LSTM else h0s)
    h_last = last[0] if cls is LSTM else last
    (ops.sum(y * Tensor(u)) + ops.sum(h_last * Tensor(v))).backward()

    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    yt, st = twin(xt, (h0t[None], c0t[None]) if cls is LSTM else h0t[None])
    ht = st[0][0] if cls is LSTM else st[0]
    ((yt * torch.from_numpy(u)).sum() + (ht * torch.from_numpy(v)).sum()).backward()

    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.data, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(h_last.data, ht.detach().numpy(), **tol)
    if cls is LSTM:
        np.testing.assert_allclose(last[1].data, st[1][0].detach().numpy(), **tol)
        np.testing.assert_allclose(c0s.grad, c0t.grad.numpy(), **tol)
    np.testing.assert_allclose(xs.grad, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(h0s.grad, h0t.grad.numpy(), **tol)
    ours = dict(m.named_parameters())
    for name, p in twin.named_parameters():
        mine = ours[name.removesuffix("_l0")].grad
        np.testing.assert_allclose(mine.T if mine.ndim == 2 else mine, p.grad.numpy(), **tol, err_msg=name)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_the_loop_over_t_runs_its_small_gemms_on_one_blas_thread(cls, monkeypatch):
    """Per-step GEMMs (B rows) on one BLAS thread, the GEMMs over all t (B T rows) on every thread."""
    from threadpoolctl import threadpool_info

    from mincore import sequential

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    outside, seen, mm = blas_threads(), {}, ops.mm

    def spy(a, b):
        seen.setdefault("step" if a.shape[0] == B else "all t", set()).update(blas_threads())
        return mm(a, b)
    monkeypatch.setattr(sequential.ops, "mm", spy)
    m = cls(D, H, rng=np.random.default_rng(0))
    y, _ = m(Tensor(np.ones((B, T, D), np.float32), requires_grad=True))
    ops.sum(y).backward()
    assert seen["step"] == {1} and seen["all t"] == set(outside)
    assert blas_threads() == outside
