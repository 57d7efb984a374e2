"""Elementwise activations with their VJPs: exp, log, tanh, sigmoid, softplus, relu, gelu, silu.

Each VJP reuses what the forward computed (the output for exp/tanh/sigmoid) and keeps the input dtype
(Python-float constants only). All are re-exported by mincore.autograd.ops.

`gelu` is the one place where mincore.autograd calls mincore.kernels (the fused numba GELU), imported
inside the function: the layer rule (docs/ARCHITECTURE.md) allows autograd -> kernels only lazily.
"""

from __future__ import annotations

import math

import numpy as np

from .tensor import record

__all__ = ["exp", "log", "tanh", "sigmoid", "softplus", "relu", "gelu", "silu", "sigmoid_array"]


def exp(a):
    out = a.xp.exp(a.data)
    return record(out, (a,), lambda g: (g * out,))


def log(a):
    x = a.data
    return record(a.xp.log(x), (a,), lambda g: (g / x,))


def tanh(a):
    out = a.xp.tanh(a.data)
    return record(out, (a,), lambda g: (g * (1 - out * out),))


def sigmoid_array(xp, x):
    """sigmoid(x) from e = exp(-|x|) <= 1: 1/(1+e) for x >= 0, e/(1+e) otherwise (no overflow, full
    relative precision in both tails)."""
    e = xp.exp(-xp.abs(x))
    s = 1 / (1 + e)
    return xp.where(x >= 0, s, e * s)


def sigmoid(a):
    out = sigmoid_array(a.xp, a.data)
    return record(out, (a,), lambda g: (g * out * (1 - out),))


def softplus(a):
    """log(1 + e^x), evaluated as logaddexp(x, 0); d/dx = sigmoid(x)."""
    x = a.data
    return record(a.xp.logaddexp(x, 0), (a,), lambda g: (g * sigmoid_array(a.xp, x),))


def relu(a):
    x = a.data
    return record(a.xp.maximum(x, 0), (a,), lambda g: (g * (x > 0),))


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(a):
    """GELU, tanh form (Hendrycks & Gimpel 2016; as in GPT-2): 0.5 x (1 + tanh(c (x + 0.044715 x^3))).

    Contiguous NumPy float32/float64 input takes the fused numba kernels (mincore.kernels.numba_act:
    one pass each way, ~30x faster); `gelu_reference`, the array formula, is their oracle and the
    path for everything else (CuPy, strided views, other dtypes).
    """
    x = a.data
    if type(x) is np.ndarray and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
        from mincore.kernels import numba_act  # here, so `import mincore.autograd` does not load numba

        return record(numba_act.gelu(x), (a,), lambda g: (numba_act.gelu_vjp(g, x),))
    return gelu_reference(a)


def gelu_reference(a):
    """The array-module formula of `gelu` (any backend, any layout)."""
    x = a.data
    t = a.xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))

    def gelu_vjp(g):
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x)),)
    return record(0.5 * x * (1 + t), (a,), gelu_vjp)


def silu(a):
    """x sigmoid(x); d/dx = s (1 + x (1 - s))."""
    x = a.data
    s = sigmoid_array(a.xp, x)
    return record(x * s, (a,), lambda g: (g * s * (1 + x * (1 - s)),))
