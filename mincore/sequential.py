"""Sequential GRU and LSTM (the classic cells, PyTorch's gate equations) on mincore.autograd.

The baselines of the paper's efficiency figure (`mincore bench paper`): each step's gates depend on
h_{t-1}, so the T steps run one after another. Each layer's whole sequence is ONE autograd primitive:
the input projection is one GEMM over all t, the forward loops over t with one small GEMM h_{t-1} W_hh
per step, and the VJP runs backpropagation through time over the saved gates, leaving the weight
gradients to one GEMM each over all t. No autograd runs inside the loop.

Weights are stored (in, out) like nn.Linear, gates in PyTorch's order: weight_ih (dim, 3H) and
weight_hh (H, 3H) with columns [r | z | n] for the GRU, [i | f | g | o] (4H) for the LSTM; so
weight_ih = torch's weight_ih_l0.T. Equations (torch.nn.GRU / nn.LSTM):
    GRU:  r, z = sigmoid(x W_ir + b_ir + h W_hr + b_hr), sigmoid(... z ...)
          n = tanh(x W_in + b_in + r (h W_hn + b_hn)),  h' = (1 - z) n + z h
    LSTM: i, f, o = sigmoid(x W_i* + b_i* + h W_h* + b_h*),  g = tanh(...)
          c' = f c + i g,  h' = o tanh(c')
Layers: forward(x (B, T, dim), state=None) -> (y (B, T, H), last state) and step(x_t, state) ->
(y_t, state), with state h (GRU) or (h, c) (LSTM); None means zeros.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np

from mincore.autograd import Parameter, Tensor, as_tensor, nn, no_grad, ops, primitive
from mincore.backend import get_array_module

__all__ = ["gru_op", "lstm_op", "GRU", "LSTM"]


def _sigmoid_(xp, a):
    """sigmoid(a) in place, as (1 + tanh(a / 2)) / 2: no overflow for any a (exp(-a) would overflow)."""
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def _dsigmoid_(d, s):
    """d *= s (1 - s), the sigmoid's derivative from its output s, in place."""
    d *= s
    d -= d * s


def _dtanh_(d, t):
    """d *= 1 - t^2, tanh's derivative from its output t, in place."""
    d -= d * t * t


def _small_gemms(xp):
    """A context for the loop over t: one BLAS thread on the CPU. Each step's GEMM is small ((B, H) x
    (H, nH)); a second thread only adds a hand-off per step, and on a busy machine a wait for a core
    on every step (measured at B = 64, T = 512 on 2 busy cores: 4-10x slower steps with 2 threads).
    The GEMMs over all t, before and after the loop, keep every thread."""
    if xp is not np:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded thread pools, found once (a search costs ~0.3-10 ms; NumPy's
    BLAS is loaded before the first call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _input_gates(x, w_ih, bias):
    """x (B, T, dim) @ w_ih + bias for all t at once: (B, T, nH), one GEMM."""
    gates = ops.mm(x.reshape(-1, x.shape[-1]), w_ih).reshape(*x.shape[:-1], w_ih.shape[1])
    if bias is not None:
        gates += bias
    return gates


def _state(xp, s, x, H):
    return xp.zeros((x.shape[0], H), x.dtype) if s is None else s


def _previous(xp, h, h0):
    """h_{t-1} for every t as one (B T, H) array: [h0, h_0, ..., h_{T-2}] (for the W_hh gradient GEMM)."""
    T, H = h.shape[1], h.shape[2]
    return xp.concatenate([h0[:, None], h[:, :-1]], axis=1)[:, :T].reshape(-1, H)


def _input_vjp(x, w_ih, dgates):
    """dx, dW_ih, db_ih of gates = x W_ih + b_ih, each one GEMM (or sum) over all t."""
    dg = dgates.reshape(-1, dgates.shape[-1])
    dx = ops.mm(dg, w_ih.T).reshape(x.shape)
    return dx, ops.mm(x.reshape(-1, x.shape[-1]).T, dg), dg.sum(axis=0)


# ------------------------------------------------------------------------------ GRU
def _gru_bias(b_ih, b_hh, H):
    """The biases that add to the input GEMM: b_ih, plus b_hr and b_hz (b_hn stays inside r (...))."""
    if b_ih is None:
        return None
    b = b_ih.copy()
    b[: 2 * H] += b_hh[: 2 * H]
    return b


def _gru_cell(xp, g, h_prev, w_hh, b_hn, hn, h):
    """One GRU step. g (B, 3H): the input pre-activations on entry, r | z | n on exit (saved for the
    VJP); writes hn = h_prev W_hn + b_hn (saved too: dr needs it) and the new state h."""
    H = h_prev.shape[-1]
    gh = ops.mm(h_prev, w_hh)
    rz = g[:, : 2 * H]
    rz += gh[:, : 2 * H]
    _sigmoid_(xp, rz)
    r, z, n = g[:, :H], g[:, H: 2 * H], g[:, 2 * H:]
    if b_hn is None:
        hn[...] = gh[:, 2 * H:]
    else:
        xp.add(gh[:, 2 * H:], b_hn, out=hn)
    n += r * hn
    xp.tanh(n, out=n)
    xp.subtract(h_prev, n, out=h)  # h = n + z (h_prev - n)
    h *= z
    h += n


@primitive
def gru_op(x, w_ih, w_hh, b_ih, b_hh, h0):
    """h (B, T, H) of the GRU over x (B, T, dim) from h0 (B, H) (None: zeros); biases None or both
    given. VJP: backpropagation through time; gradients dx, dW_ih, dW_hh, db_ih, db_hh, dh0."""
    xp = get_array_module(x)
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[0]
    h_init = _state(xp, h0, x, H)
    gates = _input_gates(x, w_ih, _gru_bias(b_ih, b_hh, H))
    b_hn = None if b_hh is None else b_hh[2 * H:]
    hn, h = xp.empty((B, T, H), x.dtype), xp.empty((B, T, H), x.dtype)
    with _small_gemms(xp):
        for t in range(T):
            _gru_cell(xp, gates[:, t], h_init if t == 0 else h[:, t - 1], w_hh, b_hn, hn[:, t], h[:, t])

    def gru_vjp(g):
        dgates, dhn = xp.empty_like(gates), xp.empty_like(hn)  # d(input pre-activations), d(h W_hn + b_hn)
        dgh = xp.empty((B, 3 * H), x.dtype)  # this step's d(h_prev W_hh) = [dr | dz | dhn]
        w_hhT = xp.ascontiguousarray(w_hh.T)
        dh = xp.zeros((B, H), x.dtype)
        with _small_gemms(xp):
            for t in range(T - 1, -1, -1):
                h_prev = h_init if t == 0 else h[:, t - 1]
                dh += g[:, t]
                r, z, n = gates[:, t, :H], gates[:, t, H: 2 * H], gates[:, t, 2 * H:]
                dr, dz, dn = dgh[:, :H], dgh[:, H: 2 * H], dgates[:, t, 2 * H:]
                xp.multiply(dh, 1 - z, out=dn)
                _dtanh_(dn, n)
                xp.multiply(dn, r, out=dhn[:, t])
                xp.multiply(dn, hn[:, t], out=dr)
                _dsigmoid_(dr, r)
                xp.subtract(h_prev, n, out=dz)
                dz *= dh
                _dsigmoid_(dz, z)
                dgates[:, t, : 2 * H] = dgh[:, : 2 * H]
                dgh[:, 2 * H:] = dhn[:, t]
                dh *= z
                dh += ops.mm(dgh, w_hhT)
        dx, dw_ih, db_ih = _input_vjp(x, w_ih, dgates)
        hp = _previous(xp, h, h_init)
        dw_hh = xp.concatenate([ops.mm(hp.T, dgates.reshape(-1, 3 * H)[:, : 2 * H]),
                                ops.mm(hp.T, dhn.reshape(-1, H))], axis=1)
        db_hh = None if b_hh is None else xp.concatenate([db_ih[: 2 * H], dhn.sum(axis=(0, 1))])
        return dx, dw_ih, dw_hh, db_ih, db_hh, dh
    return h, gru_vjp


# ------------------------------------------------------------------------------ LSTM
def _lstm_cell(xp, a, h_prev, c_prev, w_hh, c, h):
    """One LSTM step. a (B, 4H): the input pre-activations on entry, i | f | g | o on exit (saved for
    the VJP); writes the new cell state c and state h."""
    H = h_prev.shape[-1]
    a += ops.mm(h_prev, w_hh)
    i, f, g, o = (a[:, k * H: (k + 1) * H] for k in range(4))
    _sigmoid_(xp, a[:, : 2 * H])
    xp.tanh(g, out=g)
    _sigmoid_(xp, o)
    xp.multiply(f, c_prev, out=c)
    c += i * g
    xp.tanh(c, out=h)
    h *= o


@primitive
def _lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, last):
    xp = get_array_module(x)
    B, T, H = x.shape[0], x.shape[1], w_hh.shape[0]
    h_init, c_init = _state(xp, h0, x, H), _state(xp, c0, x, H)
    gates = _input_gates(x, w_ih, None if b_ih is None else b_ih + b_hh)
    c, h = xp.empty((B, T, H), x.dtype), xp.empty((B, T, H), x.dtype)
    with _small_gemms(xp):
        for t in range(T):
            prev = (h_init, c_init) if t == 0 else (h[:, t - 1], c[:, t - 1])
            _lstm_cell(xp, gates[:, t], *prev, w_hh, c[:, t], h[:, t])
    last.append(c[:, -1] if T else c_init)

    def lstm_vjp(g):
        dgates = xp.empty_like(gates)  # d(pre-activations) i | f | g | o for every t
        w_hhT = xp.ascontiguousarray(w_hh.T)
        dh, dc = xp.zeros((B, H), x.dtype), xp.zeros((B, H), x.dtype)
        with _small_gemms(xp):
            for t in range(T - 1, -1, -1):
                c_prev = c_init if t == 0 else c[:, t - 1]
                dh += g[:, t]
                i, f, gg, o = (gates[:, t, k * H: (k + 1) * H] for k in range(4))
                di, df, dg, do = (dgates[:, t, k * H: (k + 1) * H] for k in range(4))
                tc = xp.tanh(c[:, t])
                xp.multiply(dh, tc, out=do)
                _dsigmoid_(do, o)
                dh *= o  # now dL/d tanh(c)
                _dtanh_(dh, tc)
                dc += dh
                xp.multiply(dc, gg, out=di)
                _dsigmoid_(di, i)
                xp.multiply(dc, c_prev, out=df)
                _dsigmoid_(df, f)
                xp.multiply(dc, i, out=dg)
                _dtanh_(dg, gg)
                dc *= f
                dh = ops.mm(dgates[:, t], w_hhT)
        dx, dw_ih, db = _input_vjp(x, w_ih, dgates)
        dw_hh = ops.mm(_previous(xp, h, h_init).T, dgates.reshape(-1, 4 * H))
        return dx, dw_ih, dw_hh, db, None if b_hh is None else db, dh, dc
    return h, lstm_vjp


def lstm_op(x, w_ih, w_hh, b_ih, b_hh, h0=None, c0=None):
    """(h (B, T, H), c_last (B, H)) of the LSTM over x (B, T, dim) from h0, c0 (B, H) (None: zeros);
    biases None or both given. h is one tape entry (VJP: backpropagation through time; gradients dx,
    dW_ih, dW_hh, db_ih, db_hh, dh0, dc0); c_last carries no gradient (h does, h[:, -1] included)."""
    last = []
    h = _lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, last=last)
    return h, Tensor(last[0])


# ------------------------------------------------------------------------------ layers
class _Sequential(nn.Module):
    """Shared body: PyTorch's initialisation, U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias."""

    n_gates = 3

    def __init__(self, dim, hidden=None, *, bias=True, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.dim, self.hidden = dim, hidden if hidden is not None else dim
        H, n = self.hidden, self.n_gates
        bound = 1.0 / math.sqrt(H)

        def u(*shape):
            return rng.uniform(-bound, bound, size=shape).astype(np.float32)
        self.weight_ih, self.weight_hh = Parameter(u(dim, n * H)), Parameter(u(H, n * H))
        self.bias_ih = Parameter(u(n * H), no_decay=True) if bias else None
        self.bias_hh = Parameter(u(n * H), no_decay=True) if bias else None

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _zeros(self, x):
        return Tensor(x.xp.zeros((x.shape[0], self.hidden), x.dtype))


class GRU(_Sequential):
    """GRU layer (torch.nn.GRU's equations, one layer, batch first): dim -> hidden (default dim)."""

    n_gates = 3

    def forward(self, x, h0=None):
        x = as_tensor(x)
        h = gru_op(x, *self._weights(), h0)
        if x.shape[1] == 0:
            return h, as_tensor(h0) if h0 is not None else self._zeros(x)
        return h, h[:, -1]

    @no_grad()
    def step(self, x_t, state=None):
        x_t = as_tensor(x_t)
        xp, H = x_t.xp, self.hidden
        w_ih, w_hh, b_ih, b_hh = (None if p is None else p.data for p in self._weights())
        g = _input_gates(x_t.data, w_ih, _gru_bias(b_ih, b_hh, H))
        h_prev = xp.zeros((x_t.shape[0], H), x_t.dtype) if state is None else as_tensor(state).data
        hn, h = xp.empty_like(h_prev), xp.empty_like(h_prev)
        _gru_cell(xp, g, h_prev, w_hh, None if b_hh is None else b_hh[2 * H:], hn, h)
        return Tensor(h), Tensor(h)


class LSTM(_Sequential):
    """LSTM layer (torch.nn.LSTM's equations, one layer, batch first): dim -> hidden (default dim);
    state (h, c). forward's last c carries no gradient (its h does)."""

    n_gates = 4

    def forward(self, x, state=None):
        x = as_tensor(x)
        h0, c0 = (None, None) if state is None else state
        h, c_last = lstm_op(x, *self._weights(), h0, c0)
        if x.shape[1] == 0:
            return h, (as_tensor(h0) if h0 is not None else self._zeros(x), c_last)
        return h, (h[:, -1], c_last)

    @no_grad()
    def step(self, x_t, state=None):
        x_t = as_tensor(x_t)
        xp, H = x_t.xp, self.hidden
        w_ih, w_hh, b_ih, b_hh = (None if p is None else p.data for p in self._weights())
        a = _input_gates(x_t.data, w_ih, None if b_ih is None else b_ih + b_hh)
        zeros = xp.zeros((x_t.shape[0], H), x_t.dtype)
        h_prev, c_prev = (zeros, zeros) if state is None else (as_tensor(s).data for s in state)
        c, h = xp.empty_like(zeros), xp.empty_like(zeros)
        _lstm_cell(xp, a, h_prev, c_prev, w_hh, c, h)
        return Tensor(h), (Tensor(h), Tensor(c))
