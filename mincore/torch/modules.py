"""MinGRU, MinLSTM (Feng et al. 2024) and LRU (Orvieto et al. 2023) as torch.nn.Modules on mincore's
kernels, with the conventions of mincore.layers (docs/AUTOGRAD.md, Layer conventions): inner width
int(expansion * dim), no output projection when inner == dim (else Linear(inner, dim) without bias),
a learned initial state (learn_h0) that enters through g with log_space, and the LRU's
parameterisation (nu_log, theta_log, gamma_log; B and C as interleaved (Re, Im) pairs). Parameters
are ordinary nn.Parameters (torch.nn.Linear weights are (out, in)); every layer has

    forward(x (B, T, dim), h0=None) -> (y (B, T, dim), h_last)   the parallel scan
    step(x_t (B, dim), state=None)  -> (y_t (B, dim), state)      one recurrent step, O(1) memory

step is plain torch arithmetic (differentiable, any device) with the kernels' gate formulas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import lru_scan, min_gru, min_lstm

__all__ = ["MinGRU", "MinLSTM", "LRU", "g"]


def _softplus(x):
    # the kernels' formula (mincore.kernels.gates): F.softplus switches to x above a threshold
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


def g(x):
    """The paper's positive activation for h~ (appendix B): x + 1/2 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class _MinRNN(nn.Module):
    """Shared body: to_hidden (dim -> n_pre * inner), the scan, to_out (inner -> dim, none when
    inner == dim) and the optional learned initial state (inner,), zeros at init."""

    n_pre = 2  # pre-activations per step: [k | v] (minGRU), [kf | ki | v] (minLSTM)

    def __init__(self, dim, expansion=1.0, *, log_space=False, learn_h0=False, bias=True, engine=None,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dim, self.inner = dim, int(expansion * dim)
        self.log_space, self.engine = log_space, engine
        self.to_hidden = nn.Linear(dim, self.n_pre * self.inner, bias=bias, **kw)
        self.to_out = nn.Linear(self.inner, dim, bias=False, **kw) if self.inner != dim else None
        self.h0 = nn.Parameter(torch.zeros(self.inner, **kw)) if learn_h0 else None

    def pre(self, x):
        """The n_pre pre-activations of x, each its own contiguous (..., inner) tensor: one GEMM per
        gate instead of chunking one product into strided views the kernels would copy."""
        w, b, inner = self.to_hidden.weight, self.to_hidden.bias, self.inner
        return [F.linear(x, w[j * inner:(j + 1) * inner], None if b is None else b[j * inner:(j + 1) * inner])
                for j in range(self.n_pre)]

    def initial_state(self, h0, batch):
        """The state h_{-1}: h0 as given, else the learned one (g of it with log_space), else None."""
        if h0 is not None or self.h0 is None:
            return h0
        return (g(self.h0) if self.log_space else self.h0).expand(batch, self.inner)

    def out(self, h):
        """y = h W_out^T, the output projection (h itself when inner == dim)."""
        return h if self.to_out is None else self.to_out(h)

    def forward(self, x, h0=None):
        h0 = self.initial_state(h0, x.shape[0])
        h = self.scan(*self.pre(x), h0)
        if x.shape[1] > 0:
            h_last = h[:, -1]
        else:
            h_last = h0 if h0 is not None else x.new_zeros((x.shape[0], self.inner))
        return self.out(h), h_last

    def step(self, x_t, state=None):
        h_prev = self.initial_state(state, x_t.shape[0])
        a, b = self.coeffs(*self.pre(x_t))
        h = b if h_prev is None else a * h_prev + b
        return self.out(h), h

    def h_tilde(self, v):
        return g(v) if self.log_space else v


class MinGRU(_MinRNN):
    """minGRU (Feng et al. 2024, sec. 3.1): [k | v] = to_hidden(x), z = sigmoid(k), h~ = v (g(v)
    with log_space), h_t = (1 - z_t) h_{t-1} + z_t h~_t, y = to_out(h)."""

    n_pre = 2

    def scan(self, k, v, h0):
        return min_gru(k, v, h0, log_space=self.log_space, engine=self.engine)

    def coeffs(self, k, v):
        """(a, b) of h = a h_prev + b; 1 - z as sigmoid(-k) (no cancellation near z = 1)."""
        return torch.sigmoid(-k), torch.sigmoid(k) * self.h_tilde(v)


class MinLSTM(_MinRNN):
    """minLSTM (Feng et al. 2024, sec. 3.2): [kf | ki | v] = to_hidden(x), f = sigmoid(kf),
    i = sigmoid(ki); normalize: f' = f / (f + i), i' = i / (f + i); h_t = f'_t h_{t-1} + i'_t h~_t.
    The forget-gate bias starts at +forget_bias (long memory at init), as in the released code."""

    n_pre = 3

    def __init__(self, dim, expansion=1.0, *, normalize=True, forget_bias=3.0, **kw):
        super().__init__(dim, expansion, **kw)
        self.normalize = normalize
        if self.to_hidden.bias is not None:
            with torch.no_grad():
                self.to_hidden.bias[: self.inner] += forget_bias

    def scan(self, kf, ki, v, h0):
        return min_lstm(kf, ki, v, h0, normalize=self.normalize, log_space=self.log_space, engine=self.engine)

    def coeffs(self, kf, ki, v):
        """(a, b) of h = a h_prev + b; normalize in the log-space form f' = sigmoid(-diff),
        i' = sigmoid(diff), diff = softplus(-kf) - softplus(-ki) (finite for any kf, ki)."""
        ht = self.h_tilde(v)
        if self.normalize:
            diff = _softplus(-kf) - _softplus(-ki)
            return torch.sigmoid(-diff), torch.sigmoid(diff) * ht
        return torch.sigmoid(kf), torch.sigmoid(ki) * ht


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023, sec. 3): N = round(expansion * dim) complex states,
        h_t = Lambda h_{t-1} + gamma (B u_t),  y_t = Re(C h_t) + D u_t,
    Lambda = exp(-exp(nu_log) + i exp(theta_log)). As in mincore.layers.LRU, B (dim, 2N) holds B^T as
    (Re, Im) pairs, C (2N, dim) has rows (Re C_j, -Im C_j) so Re(C h) = h_pairs @ C, and states are
    pairs (batch, 2N). Ring init (sec. 3.3): |Lambda| uniform on [r_min, r_max], phase in
    [0, max_phase], gamma = sqrt(1 - |Lambda|^2)."""

    def __init__(self, dim, expansion=1.0, *, r_min=0.0, r_max=1.0, max_phase=2 * math.pi, learn_h0=False,
                 engine=None, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        N = self.N = int(round(expansion * dim))
        self.dim, self.engine = dim, engine
        u1, u2 = torch.rand(N, dtype=torch.float64), torch.rand(N, dtype=torch.float64)
        nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        self.nu_log = nn.Parameter(torch.log(nu).to(**kw))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2).to(**kw))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - torch.exp(-2 * nu))).to(**kw))
        B = torch.randn(2, N, dim, dtype=torch.float64) * math.sqrt(1 / (2 * dim))  # Re, Im ~ N(0, 1/(2H))
        self.B = nn.Parameter(torch.stack([B[0].T, B[1].T], dim=-1).reshape(dim, 2 * N).to(**kw))
        C = torch.randn(2, dim, N, dtype=torch.float64) * math.sqrt(1 / N)  # Re, Im ~ N(0, 1/N)
        self.C = nn.Parameter(torch.stack([C[0].T, -C[1].T], dim=1).reshape(2 * N, dim).to(**kw))
        self.D = nn.Parameter(torch.randn(dim, dtype=torch.float64).to(**kw))
        self.h0 = nn.Parameter(torch.zeros(2 * N, **kw)) if learn_h0 else None

    def lam(self):
        """Lambda (N,), complex."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def bu(self, x):
        """gamma (B u) as complex (..., N): gamma scales the weights, not the activations."""
        bg = self.B * torch.exp(self.gamma_log).repeat_interleave(2)
        return _complex(x @ bg)

    def initial_state(self, h0, batch):
        if h0 is not None or self.h0 is None:
            return h0
        return self.h0.expand(batch, 2 * self.N)

    def forward(self, x, h0=None):
        h0 = self.initial_state(h0, x.shape[0])
        h = torch.view_as_real(lru_scan(self.lam(), self.bu(x), None if h0 is None else _complex(h0),
                                        engine=self.engine)).flatten(-2)
        y = h @ self.C + x * self.D
        if x.shape[1] > 0:
            return y, h[:, -1]
        return y, h0 if h0 is not None else x.new_zeros((x.shape[0], 2 * self.N))

    def step(self, x_t, state=None):
        s = self.initial_state(state, x_t.shape[0])
        h = self.bu(x_t)
        if s is not None:
            h = self.lam() * _complex(s) + h
        h = torch.view_as_real(h).flatten(-2)
        return h @ self.C + x_t * self.D, h


def _complex(pairs):
    """Interleaved (Re, Im) pairs (..., 2N) as a complex (..., N) view."""
    return torch.view_as_complex(pairs.unflatten(-1, (-1, 2)))
