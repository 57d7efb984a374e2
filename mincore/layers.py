"""Recurrent layers MinGRU, MinLSTM (Feng et al. 2024) and LRU (Orvieto et al. 2023) on mincore.autograd.

Each recurrence, with its input projection, is ONE autograd primitive: its forward runs the GEMMs
and the fused kernel (mincore.min_gru, min_lstm, lru_scan), its VJP the explicit backward kernel
with the saved output h and the GEMMs' adjoints, so no autograd runs through the scan. Every layer has
    forward(x (B, T, dim), h0=None) -> (y (B, T, dim), h_last)   whole sequences (parallel scan)
    step(x_t (B, dim), state)      -> (y_t (B, dim), state)      recurrent inference, O(1) memory
with state = None meaning the initial state (zeros, or the learned one). `engine` passes through to
the kernels (None: by array type, then $MINCORE_ENGINE). MinGRU and MinLSTM also offer the parts of
forward, for models that compute less than every output: scan (before the output projection), out
(that projection) and scan_lookup (scan over rows of a table picked by token, e.g. an embedding).
The LRU (mincore/lru.py) and the sequential GRU / LSTM baselines (mincore/sequential.py) live in their
own modules and are re-exported here: mincore.layers is the one place to import layers from.
"""

from __future__ import annotations

import numpy as np

from mincore import cells
from mincore.autograd import Parameter, Tensor, as_tensor, nn, no_grad, ops, primitive
from mincore.backend import get_array_module
from mincore.kernels import gates
from mincore.lru import LRU, lru_op
from mincore.sequential import GRU, LSTM, gru_op, lstm_op

__all__ = ["min_gru_op", "min_lstm_op", "lookup_scan_op", "lru_op", "g_op", "MinGRU", "MinLSTM", "LRU",
           "gru_op", "lstm_op", "GRU", "LSTM"]


def _split(xp, x, n):
    """n contiguous (B, T, I) pieces of the last axis of x (the kernels take C-contiguous arrays)."""
    size = x.shape[-1] // n
    return [xp.ascontiguousarray(x[..., i * size:(i + 1) * size]) for i in range(n)]


# ------------------------------------------------------------------------------ primitives
def _project(xp, x, w, b, n):
    """n C-contiguous pre-activations x @ w_j + b_j (w = [w_1 | ... | w_n]), one GEMM each straight
    into its own buffer: the kernels take separate contiguous k, v, so this avoids splitting one
    (B, T, n I) product into copies (and re-joining the gradients) on every step. The bias rides in
    the GEMM as an extra input column of ones ([x | 1] @ [w_j ; b_j]), so neither the forward nor
    the backward (db = last row of [x | 1]^T g) makes a separate pass over the (B, T, I) outputs.
    Returns the outputs and [x | 1] (kept for the VJP)."""
    x2 = x.reshape(-1, x.shape[-1])
    if b is not None:
        x2 = xp.concatenate([x2, xp.ones((x2.shape[0], 1), x2.dtype)], axis=1)
    size = w.shape[1] // n
    outs = []
    for j in range(n):
        cols = slice(j * size, (j + 1) * size)
        # a small contiguous (dim [+1], I) weight: GEMM on a strided slice measured ~2x slower
        wj = xp.ascontiguousarray(w[:, cols]) if b is None else xp.concatenate([w[:, cols], b[None, cols]])
        outs.append(ops.mm(x2, wj).reshape(*x.shape[:-1], size))
    return outs, x2


def _project_vjp(xp, xa, x, w, b, dpre):
    """dx = sum_j g_j w_j^T, [dw_j ; db_j] = [x | 1]^T g_j."""
    size = w.shape[1] // len(dpre)
    dx, dw = None, xp.empty_like(w)
    db = None if b is None else xp.empty_like(b)
    for j, g in enumerate(dpre):
        cols = slice(j * size, (j + 1) * size)
        g2 = g.reshape(-1, size)
        gx = ops.mm(g2, w[:, cols].T)
        dx = gx if dx is None else xp.add(dx, gx, out=dx)
        dwb = ops.mm(xa.T, g2)
        if db is None:
            dw[:, cols] = dwb
        else:
            dw[:, cols], db[cols] = dwb[:-1], dwb[-1]
    return dx.reshape(x.shape), dw, db


def _scan_cell(cell, pre, h0, kw):
    """h = mincore.<cell>(*pre, h0) and its VJP g -> (dpre..., dh0), the backward kernel with the saved
    h. The kernels are looked up in mincore.cells at call time (profilers can wrap them)."""
    xp = get_array_module(pre[0])
    h0 = None if h0 is None else xp.ascontiguousarray(h0)
    h = getattr(cells, cell)(*pre, h0, **kw)

    def scan_vjp(g):
        return getattr(cells, cell + "_backward")(*pre, h, xp.ascontiguousarray(g), h0, **kw)
    return h, scan_vjp


@primitive
def min_gru_op(x, w, b, h0, *, log_space=False, engine=None):
    """[k | v] = x w + b (w (dim, 2I)); h = mincore.min_gru(k, v, h0): one tape entry whose VJP calls
    mincore.min_gru_backward with the saved h. Returns h (B, T, I); gradients dx, dw, db, dh0."""
    return _projected_scan("min_gru", x, w, b, h0, {"log_space": log_space, "engine": engine})


@primitive
def min_lstm_op(x, w, b, h0, *, normalize=True, log_space=False, engine=None):
    """[kf | ki | v] = x w + b (w (dim, 3I)); h = mincore.min_lstm(kf, ki, v, h0); VJP via
    mincore.min_lstm_backward with the saved h. Returns h (B, T, I); gradients dx, dw, db, dh0."""
    return _projected_scan("min_lstm", x, w, b, h0, {"normalize": normalize, "log_space": log_space,
                                                     "engine": engine})


@primitive
def lookup_scan_op(table, idx, h0, *, cell, **kw):
    """h = mincore.<cell>(*pre, h0) with pre_j = table[idx] restricted to the j-th of its n column
    blocks: the recurrence over per-token pre-activations (table (V, n I), idx (B, T) integers; n = 2
    for min_gru, 3 for min_lstm). VJP: the backward kernel, then the per-token sums of dpre_j
    (one-hot (V, B T) @ (B T, I)) into the table's columns, and dh0."""
    xp = get_array_module(table)
    h, scan_vjp = _scan_cell(cell, [p[idx] for p in _split(xp, table, _N_PRE[cell])], h0, kw)

    def lookup_scan_vjp(g):
        *dpre, dh0 = scan_vjp(g)
        onehot_t = (xp.arange(table.shape[0])[:, None] == idx.reshape(1, -1)).astype(table.dtype)  # (V, B T)
        return xp.concatenate([ops.mm(onehot_t, d.reshape(-1, d.shape[-1])) for d in dpre], axis=1), None, dh0
    return h, lookup_scan_vjp


_N_PRE = {"min_gru": 2, "min_lstm": 3}  # pre-activations per step: [k | v], [kf | ki | v]


def _projected_scan(cell, x, w, b, h0, kw):
    """(h, VJP) of h = mincore.<cell>(*_project(x, w, b), h0); the VJP returns dx, dw, db, dh0."""
    xp = get_array_module(x)
    pre, xa = _project(xp, x, w, b, _N_PRE[cell])
    h, scan_vjp = _scan_cell(cell, pre, h0, kw)

    def projected_scan_vjp(g):
        *dpre, dh0 = scan_vjp(g)
        return (*_project_vjp(xp, xa, x, w, b, dpre), dh0)
    projected_scan_vjp.__name__ = cell + "_vjp"
    return h, projected_scan_vjp


@primitive
def g_op(x):
    """h = g(x), the paper's positive activation (appendix B: x + 1/2 for x >= 0, sigmoid(x) below);
    VJP g'(x) = 1 or sigmoid(x) (1 - sigmoid(x))."""
    xp = get_array_module(x)

    def g_vjp(g):
        return (g * gates.dg(xp, x),)
    return gates.g(xp, x).astype(x.dtype, copy=False), g_vjp


# ------------------------------------------------------------------------------ layers
class _MinRNN(nn.Module):
    """Shared body: to_hidden (dim -> n_pre * inner, inner = int(expansion * dim) as in the official
    code and minGRU-pytorch), the scan, to_out (inner -> dim without bias, skipped when inner == dim:
    minGRU-pytorch's choice; the official code always projects, with a bias), and an optional learned
    initial state (learn_h0: a (inner,) parameter, zeros at init; with log_space the state is g(h0),
    as in the official code, so it is positive like every log-space state; else h0 itself)."""

    n_pre, cell = 2, "min_gru"  # pre-activations per step, and the kernel (mincore.cells) that scans them

    def __init__(self, dim, expansion=1.0, *, log_space=False, learn_h0=False, bias=True, engine=None,
                 rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.dim, self.inner = dim, int(expansion * dim)
        self.log_space, self.engine = log_space, engine
        self.to_hidden = nn.Linear(dim, self.n_pre * self.inner, bias=bias, rng=rng)
        self.to_out = nn.Linear(self.inner, dim, bias=False, rng=rng) if self.inner != dim else None
        self.h0 = Parameter(np.zeros(self.inner, np.float32), no_decay=True) if learn_h0 else None

    def _h0(self, h0, batch):
        if h0 is not None:
            return as_tensor(h0)
        if self.h0 is None:
            return None
        return ops.broadcast_to(g_op(self.h0) if self.log_space else self.h0, (batch, self.inner))

    def kernel_kw(self) -> dict:
        """The keyword arguments of this layer's kernels: mincore.<cell>(*pre, h0, **kernel_kw())."""
        return {"log_space": self.log_space, "engine": self.engine}

    def scan(self, x, h0=None):
        """h (B, T, inner): the recurrence with its input projection, before the output projection
        (forward(x, h0)[0] is out(scan(x, h0)))."""
        x = as_tensor(x)
        return self._scan(x, self._h0(h0, x.shape[0]))

    def scan_lookup(self, table, idx, h0=None):
        """scan(table[idx]) for a (V, dim) table and (B, T) integer idx, projecting the V rows once
        instead of all B T positions: for inputs that depend on the token alone, such as a (normalised)
        embedding. The table's gradient flows through the same tape."""
        lin = self.to_hidden
        pre = ops.linear(table, lin.weight, lin.bias)  # (V, n_pre * inner)
        return lookup_scan_op(pre, idx, self._h0(h0, idx.shape[0]), cell=self.cell, **self.kernel_kw())

    def out(self, h):
        """y = h W_out, the output projection (h itself when inner == dim)."""
        return self.to_out(h) if self.to_out is not None else h

    def forward(self, x, h0=None):
        x = as_tensor(x)
        h0 = self._h0(h0, x.shape[0])
        h = self._scan(x, h0)
        if x.shape[1] == 0:
            h_last = h0 if h0 is not None else Tensor(x.xp.zeros((x.shape[0], self.inner), x.dtype))
        else:
            h_last = h[:, -1]
        return self.out(h), h_last

    @no_grad()
    def step(self, x_t, state=None):
        x_t = as_tensor(x_t)
        h_prev = self._h0(state, x_t.shape[0])
        xp = x_t.xp
        h_prev = (xp.zeros((x_t.shape[0], self.inner), x_t.dtype) if h_prev is None
                  else xp.ascontiguousarray(h_prev.data))
        pre = _split(xp, self.to_hidden(x_t).data, self.n_pre)
        h = Tensor(self._cell_step(*pre, h_prev))
        return self.out(h), h


class MinGRU(_MinRNN):
    """minGRU (Feng et al. 2024, sec. 3.1): [k | v] = x W_h + b, z = sigmoid(k), h~ = v (g(v) when
    log_space), h_t = (1 - z_t) h_{t-1} + z_t h~_t, y = h W_out. Parameters O(2 inner dim)."""

    n_pre, cell = 2, "min_gru"

    def _scan(self, x, h0):
        lin = self.to_hidden
        return min_gru_op(x, lin.weight, lin.bias, h0, **self.kernel_kw())

    def _cell_step(self, k, v, h_prev):
        return cells.min_gru_step(k, v, h_prev, log_space=self.log_space)


class MinLSTM(_MinRNN):
    """minLSTM (Feng et al. 2024, sec. 3.2): [kf | ki | v] = x W_h + b, f = sigmoid(kf),
    i = sigmoid(ki); normalize: f' = f / (f + i), i' = i / (f + i); h_t = f'_t h_{t-1} + i'_t h~_t.
    As in the released code the forget-gate bias starts at +3 (long memory at init) and
    `normalize=False` keeps f and i as they are."""

    n_pre, cell = 3, "min_lstm"

    def __init__(self, dim, expansion=1.0, *, normalize=True, forget_bias=3.0, bias=True, **kw):
        super().__init__(dim, expansion, bias=bias, **kw)
        self.normalize = normalize
        if self.to_hidden.bias is not None:
            self.to_hidden.bias.data[: self.inner] += np.float32(forget_bias)

    def kernel_kw(self) -> dict:
        return {"normalize": self.normalize, **super().kernel_kw()}

    def _scan(self, x, h0):
        lin = self.to_hidden
        return min_lstm_op(x, lin.weight, lin.bias, h0, **self.kernel_kw())

    def _cell_step(self, kf, ki, v, h_prev):
        return cells.min_lstm_step(kf, ki, v, h_prev, normalize=self.normalize, log_space=self.log_space)
