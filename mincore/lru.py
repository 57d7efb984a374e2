"""The Linear Recurrent Unit (Orvieto et al. 2023) on mincore.autograd: the recurrence with its input
projection as ONE autograd primitive (`lru_op`: the GEMM and the complex scan kernel forward, the
explicit backward kernel with the saved h in the VJP) and the layer `LRU`. Re-exported by
mincore.layers, beside MinGRU and MinLSTM, whose conventions it shares (forward(x, h0=None) ->
(y, h_last), step(x_t, state) for O(1)-memory inference)."""

from __future__ import annotations

import math

import numpy as np

from mincore import cells
from mincore.autograd import Parameter, Tensor, as_tensor, nn, no_grad, ops, primitive
from mincore.backend import get_array_module

__all__ = ["lru_op", "LRU"]


def _lru_lambda(xp, nu_log, theta_log):
    """Lambda = exp(-exp(nu_log) + i exp(theta_log)) (Orvieto et al. 2023, sec. 3.3): |Lambda| < 1."""
    return xp.exp(-xp.exp(nu_log) + 1j * xp.exp(theta_log))


def _as_complex(xp, pairs, ctype):
    """Interleaved real pairs (..., 2N) = (Re z_0, Im z_0, Re z_1, ...) as a complex (..., N) view."""
    return xp.ascontiguousarray(pairs).view(ctype)


@primitive
def lru_op(x, B, nu_log, theta_log, gamma_log, h0, *, engine=None):
    """LRU recurrence with its input projection, on interleaved real pairs (Re, Im) per channel:
        Bu = x @ (B diag(gamma)) viewed as complex (B (dim, 2N) is B^T as pairs),
        h_t = Lambda h_{t-1} + Bu_t   (mincore.lru_scan),   returned as pairs (B, T, 2N).
    gamma scales the (dim, 2N) weights, not the (B, T, 2N) activations, and pairs are views of the
    complex arrays, so the GEMMs and the kernels are the only full passes. h0: pairs (B, 2N) or None.

    VJP (complex gradients as dL/dRe + i dL/dIm, from lru_scan_backward; dbu as pairs = dL/dBu):
        dx = dbu @ Bg^T, dBg = x^T dbu, dB = dBg gamma, dgamma_log_j = gamma_j sum(dBg B) over pair j,
        dw = dlam conj(Lambda) for w = -exp(nu_log) + i exp(theta_log), so
        dnu_log = -exp(nu_log) Re(dw),  dtheta_log = exp(theta_log) Im(dw).
    """
    xp = get_array_module(x)
    N = nu_log.shape[0]
    ctype = np.result_type(x.dtype, np.complex64)
    lam = _lru_lambda(xp, nu_log, theta_log).astype(ctype)
    gamma2 = xp.repeat(xp.exp(gamma_log), 2)  # per pair entry
    Bg = B * gamma2
    x2 = x.reshape(-1, x.shape[-1])
    bu = ops.mm(x2, Bg).view(ctype).reshape(*x.shape[:-1], N)
    h0c = None if h0 is None else _as_complex(xp, h0, ctype)
    h = cells.lru_scan(lam, bu, h0c, engine=engine)

    def lru_vjp(g):
        dlam, dbu, dh0 = cells.lru_scan_backward(lam, h, _as_complex(xp, g, ctype), h0c, engine=engine)
        g2 = dbu.view(x.dtype).reshape(-1, 2 * N)
        dx = ops.mm(g2, Bg.T).reshape(x.shape)
        dBg = ops.mm(x2.T, g2)
        dgamma = (gamma2 * (dBg * B).sum(axis=0)).reshape(N, 2).sum(axis=1)
        dw = dlam * lam.conj()
        dnu = (-xp.exp(nu_log) * dw.real).astype(nu_log.dtype)
        dtheta = (xp.exp(theta_log) * dw.imag).astype(theta_log.dtype)
        dh02 = None if h0 is None else dh0.view(h0.dtype)
        return dx, dBg * gamma2, dnu, dtheta, dgamma.astype(gamma_log.dtype), dh02
    return h.view(x.dtype), lru_vjp


class LRU(nn.Module):
    """Linear Recurrent Unit (Orvieto et al. 2023, sec. 3): N = expansion * dim complex states,
        h_t = Lambda h_{t-1} + gamma (B u_t),  y_t = Re(C h_t) + D u_t.
    Complex values are stored as interleaved real pairs (Re, Im), which are views of complex arrays:
    B (dim, 2N) is B^T as pairs (u @ B = Bu as pairs); C (2N, dim) has rows (Re C_j, -Im C_j) so
    Re(C h) = h_pairs @ C; states are pairs (B, 2N). Ring init (sec. 3.3): |Lambda| uniform on the
    ring [r_min, r_max], phase in [0, max_phase]; gamma = sqrt(1 - |Lambda|^2)."""

    def __init__(self, dim, expansion=1.0, *, r_min=0.0, r_max=1.0, max_phase=2 * math.pi,
                 learn_h0=False, engine=None, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        N = self.N = int(round(expansion * dim))
        self.dim, self.engine = dim, engine
        u1, u2 = rng.uniform(size=N), rng.uniform(size=N)
        nu = -0.5 * np.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        theta = max_phase * u2
        f32 = np.float32
        self.nu_log = Parameter(np.log(nu).astype(f32), no_decay=True)
        self.theta_log = Parameter(np.log(theta).astype(f32), no_decay=True)
        self.gamma_log = Parameter(np.log(np.sqrt(1 - np.exp(-2 * nu))).astype(f32), no_decay=True)
        B = rng.normal(0, math.sqrt(1 / (2 * dim)), size=(2, N, dim))  # Re, Im ~ N(0, 1/(2H))
        self.B = Parameter(np.stack([B[0].T, B[1].T], axis=-1).reshape(dim, 2 * N).astype(f32), no_decay=True)
        C = rng.normal(0, math.sqrt(1 / N), size=(2, dim, N))  # Re, Im ~ N(0, 1/N)
        self.C = Parameter(np.stack([C[0].T, -C[1].T], axis=1).reshape(2 * N, dim).astype(f32))
        self.D = Parameter(rng.normal(size=dim).astype(f32), no_decay=True)
        self.h0 = Parameter(np.zeros(2 * N, f32), no_decay=True) if learn_h0 else None

    def lam(self):
        """Lambda as a complex NumPy/CuPy array (N,)."""
        return _lru_lambda(self.nu_log.xp, self.nu_log.data, self.theta_log.data)

    def _h0(self, h0, batch):
        if h0 is not None:
            return as_tensor(h0)
        return None if self.h0 is None else ops.broadcast_to(self.h0, (batch, 2 * self.N))

    def forward(self, x, h0=None):
        x = as_tensor(x)
        h0 = self._h0(h0, x.shape[0])
        h = lru_op(x, self.B, self.nu_log, self.theta_log, self.gamma_log, h0, engine=self.engine)
        y = ops.linear(h, self.C) + x * self.D
        if x.shape[1] == 0:
            return y, h0 if h0 is not None else Tensor(x.xp.zeros((x.shape[0], 2 * self.N), x.dtype))
        return y, h[:, -1]

    @no_grad()
    def step(self, x_t, state=None):
        x_t = as_tensor(x_t)
        xp = x_t.xp
        s = self._h0(state, x_t.shape[0])
        ctype = np.result_type(x_t.dtype, np.complex64)
        h = _as_complex(xp, x_t.data @ self.B.data, ctype) * xp.exp(self.gamma_log.data)
        if s is not None:
            h += self.lam().astype(ctype) * _as_complex(xp, s.data, ctype)
        h2 = h.view(x_t.dtype)
        y = h2 @ self.C.data + x_t.data * self.D.data
        return Tensor(y), Tensor(h2)
