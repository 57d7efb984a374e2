"""Fused GELU (tanh form) forward and VJP for contiguous NumPy arrays, with numba_math's vectorisable exp.

Why: in the Shakespeare model's MLP the NumPy GELU (tanh, cubes and five temporaries forward, nine
backward) cost 0.14 of a 0.62 CPU-second training step, more than all recurrent kernels together
(cProfile of the default preset's step: docs/BENCHMARKS.md, Shakespeare). One fused pass each way
replaces them.

Math (Hendrycks & Gimpel 2016, the GPT-2 tanh form), rewritten without tanh:
    z = 2c (x + a x^3),  c = sqrt(2 / pi),  a = 0.044715
    gelu(x) = x (1 + tanh(z/2)) / 2 = x s,  s = sigmoid(z)
    gelu'(x) = s + 2c x s (1 - s) (1 + 3a x^2)
1 - s comes from the same exp as s (fast_sigmoid_pair), so nothing cancels. The VJP recomputes s from
x (one exp is cheaper than storing and re-reading s), so the tape keeps only x. Where z is below the
exp clamp, s (1 - s) saturates at ~1e-38 instead of 0 and the second term (x^3 times that) is zeroed:
without that, |x| > 1e12 (float32) would get a gradient of order 1 too much. The NumPy formula in
mincore.autograd.elementwise is the oracle (tests/test_autograd_ops.py).

Traffic: forward reads x, writes y; VJP reads g, x, writes dx.

Caller: mincore.autograd.elementwise.gelu, which imports this module inside the function (autograd may
use kernels only lazily: docs/ARCHITECTURE.md, Layers). It lives here, not in autograd, because it is
built from the same numba pieces as the recurrent kernels (numba_math's exp, numba_scan's JIT flags).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

from . import buffers
from .numba_math import fast_sigmoid_pair
from .numba_scan import JIT, U
from .numba_threads import serialized

_BLOCK = 4096  # elements per parallel job: L1-sized pieces, many jobs for the threads


@functools.cache
def _kernels(dt):
    ft = np.dtype(dt).type
    C2, A, A3, ONE = ft(2.0 * math.sqrt(2.0 / math.pi)), ft(0.044715), ft(3 * 0.044715), ft(1.0)
    Z_SAT = ft(87.0 if ft is np.float32 else 708.0)  # numba_math's exp clamp: beyond it s or 1 - s saturates

    # JIT: no division checks, FMA contraction only; flat unsigned indices (numba_scan): both needed
    # for the inner loops to vectorise
    @njit(**JIT)
    def fwd(x, y):
        n = x.size
        for b in prange((n + _BLOCK - 1) // _BLOCK):
            o = U(b * _BLOCK)
            for j in range(min(n - b * _BLOCK, _BLOCK)):
                i = o + U(j)
                xi = x[i]
                s, _ = fast_sigmoid_pair(C2 * (xi + A * xi * xi * xi))
                y[i] = xi * s

    @njit(**JIT)
    def vjp(g, x, dx):
        n = x.size
        for b in prange((n + _BLOCK - 1) // _BLOCK):
            o = U(b * _BLOCK)
            for j in range(min(n - b * _BLOCK, _BLOCK)):
                i = o + U(j)
                xi = x[i]
                z = C2 * (xi + A * xi * xi * xi)
                s, r = fast_sigmoid_pair(z)  # r = 1 - s
                dx[i] = g[i] * (s + (abs(z) < Z_SAT) * C2 * xi * s * r * (ONE + A3 * xi * xi))

    return fwd, vjp


@serialized
def gelu(x: np.ndarray) -> np.ndarray:
    """gelu(x), tanh form. x: a C-contiguous NumPy float32/float64 array."""
    y = buffers.empty_like(x)
    _kernels(x.dtype.name)[0](x.reshape(-1), y.reshape(-1))
    return y


@serialized
def gelu_vjp(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g * gelu'(x); g is cast to x's dtype and layout."""
    g = np.ascontiguousarray(np.broadcast_to(g, x.shape), dtype=x.dtype)
    dx = buffers.empty_like(x)
    _kernels(x.dtype.name)[1](g.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx
