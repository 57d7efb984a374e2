"""Differentiable primitives: arithmetic, matmul, reductions, shape ops (activations: elementwise.py).

Each primitive computes its output from the input arrays and defines its vector-Jacobian product
`*_vjp(g)` right next to it (micrograd's closure, HIPS autograd's defvjp): given g = dL/dout it
returns dL/dinput for every input (None where no gradient is needed). Broadcasting binary ops reduce
their gradients back to the input shape with the one helper `unbroadcast`. Elementwise math stays in
the input dtype (Python-float constants only, so float32 never widens to float64).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time

import numpy as np

from .elementwise import exp, gelu, log, relu, sigmoid, sigmoid_array, silu, softplus, tanh
from .tensor import Tensor, as_tensor, record

__all__ = ["unbroadcast", "add", "sub", "mul", "div", "neg", "pow", "mm", "matmul_timer", "MatmulTally",
           "matmul", "linear", "sum", "mean", "max", "reshape", "transpose", "getitem", "flip_sequences",
           "concat", "stack", "broadcast_to", "exp", "log", "tanh", "sigmoid", "softplus", "relu", "gelu", "silu",
           "sigmoid_array"]


def unbroadcast(g, shape):
    """Sum g over the axes that broadcasting added or stretched, so the result has `shape`."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    stretched = (lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    axes = tuple(range(lead)) + tuple(stretched)
    return g.sum(axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


def _pair(a, b):
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)  # as_tensor refuses to mix NumPy and CuPy arrays
    b = as_tensor(b)
    return as_tensor(a, like=b), b


# ------------------------------------------------------------------------------ arithmetic
def add(a, b):
    a, b = _pair(a, b)

    def add_vjp(g):
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)
    return record(a.data + b.data, (a, b), add_vjp)


def sub(a, b):
    a, b = _pair(a, b)

    def sub_vjp(g):
        return unbroadcast(g, a.shape), (unbroadcast(-g, b.shape) if b.requires_grad else None)
    return record(a.data - b.data, (a, b), sub_vjp)


def mul(a, b):
    a, b = _pair(a, b)
    x, y = a.data, b.data

    def mul_vjp(g):
        return (unbroadcast(g * y, a.shape) if a.requires_grad else None,
                unbroadcast(g * x, b.shape) if b.requires_grad else None)
    return record(x * y, (a, b), mul_vjp)


def div(a, b):
    a, b = _pair(a, b)
    x, y = a.data, b.data
    out = x / y

    def div_vjp(g):
        gx = g / y
        return (unbroadcast(gx, a.shape) if a.requires_grad else None,
                unbroadcast(-gx * out, b.shape) if b.requires_grad else None)
    return record(out, (a, b), div_vjp)


def neg(a):
    return record(-a.data, (a,), lambda g: (-g,))


def pow(a, b):
    """a ** b; d/da = b a^(b-1), d/db = a^b log a (b may be a Tensor: then a must be positive)."""
    a, b = _pair(a, b)
    x, y = a.data, b.data
    out = x ** y

    def pow_vjp(g):
        ga = unbroadcast(g * y * x ** (y - 1), a.shape) if a.requires_grad else None
        gb = unbroadcast(g * out * a.xp.log(x), b.shape) if b.requires_grad else None
        return ga, gb
    return record(out, (a, b), pow_vjp)


# ------------------------------------------------------------------------------ matrix products
@dataclasses.dataclass
class MatmulTally:
    """What `matmul_timer` counted: matrix products and their host-clock seconds."""
    calls: int = 0
    seconds: float = 0.0


_tally: MatmulTally | None = None


def mm(x, y):
    """x @ y on arrays, off the tape: the matrix product under `matmul` and `linear`, for code that
    writes its own VJP (the fused recurrent layers). Inside `matmul_timer` each call is timed."""
    tally = _tally
    if tally is None:
        return x @ y
    t0 = time.perf_counter()
    out = x @ y
    tally.seconds += time.perf_counter() - t0
    tally.calls += 1
    return out


@contextlib.contextmanager
def matmul_timer():
    """Count and time (host clock) every `mm` inside the block; yields the MatmulTally. For profilers:
    a step's GEMM time next to its total. On a GPU the clock sees launches, not the products."""
    global _tally
    outer, _tally = _tally, MatmulTally()
    try:
        yield _tally
    finally:
        _tally = outer


def _swap(x):
    return x.swapaxes(-1, -2)


def matmul(a, b):
    """Batched a @ b with (..., M, K) @ (..., K, N). A 2-D b multiplies a reshaped 2-D a (one GEMM)."""
    a, b = _pair(a, b)
    x, y = a.data, b.data
    if x.ndim < 2 or y.ndim < 2:
        raise ValueError(f"matmul: expected arrays of >= 2 dims, got shapes {x.shape} and {y.shape}")
    if y.ndim == 2 and x.ndim > 2:
        x2 = x.reshape(-1, x.shape[-1])
        out = mm(x2, y).reshape(*x.shape[:-1], y.shape[1])

        def matmul2d_vjp(g):
            g2 = g.reshape(-1, g.shape[-1])
            return (mm(g2, y.T).reshape(x.shape) if a.requires_grad else None,
                    mm(x2.T, g2) if b.requires_grad else None)
        return record(out, (a, b), matmul2d_vjp)

    def matmul_vjp(g):
        return (unbroadcast(mm(g, _swap(y)), x.shape) if a.requires_grad else None,
                unbroadcast(mm(_swap(x), g), y.shape) if b.requires_grad else None)
    return record(mm(x, y), (a, b), matmul_vjp)


def linear(x, w, b=None):
    """Fused x @ w + b for x (..., I), w (I, O), b (O,): one GEMM on the (N, I) reshape of x."""
    x = as_tensor(x)
    xd, wd = x.data, w.data
    x2 = xd.reshape(-1, xd.shape[-1])
    out = mm(x2, wd)
    if b is not None:
        out += b.data
    inputs = (x, w) if b is None else (x, w, b)

    def linear_vjp(g):
        g2 = g.reshape(-1, g.shape[-1])
        dx = mm(g2, wd.T).reshape(xd.shape) if x.requires_grad else None
        dw = mm(x2.T, g2) if w.requires_grad else None
        return (dx, dw) if b is None else (dx, dw, g2.sum(axis=0) if b.requires_grad else None)
    return record(out.reshape(*xd.shape[:-1], wd.shape[1]), inputs, linear_vjp)


# ------------------------------------------------------------------------------ reductions
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axis)


def _expand(g, axes, keepdims, shape, xp):
    """Broadcast a reduced gradient back over the reduced axes."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return xp.broadcast_to(g, shape)


def sum(a, axis=None, keepdims=False):
    axes = _axes(axis, a.ndim)

    def sum_vjp(g):
        return (_expand(g, axes, keepdims, a.shape, a.xp),)
    return record(a.data.sum(axis=axes, keepdims=keepdims), (a,), sum_vjp)


def mean(a, axis=None, keepdims=False):
    axes = _axes(axis, a.ndim)
    n = math.prod(a.shape[i] for i in axes)

    def mean_vjp(g):
        return (_expand(g / n, axes, keepdims, a.shape, a.xp),)
    return record(a.data.mean(axis=axes, keepdims=keepdims), (a,), mean_vjp)


def max(a, axis=None, keepdims=False):
    """Maximum; ties share the gradient equally (a subgradient)."""
    axes = _axes(axis, a.ndim)
    out = a.data.max(axis=axes, keepdims=True)

    def max_vjp(g):
        mask = (a.data == out).astype(a.dtype)
        mask /= mask.sum(axis=axes, keepdims=True)
        return (mask * _expand(g, axes, keepdims, out.shape, a.xp),)
    return record(out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in axes]),
                  (a,), max_vjp)


# ------------------------------------------------------------------------------ shape ops
def reshape(a, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return record(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),))


def transpose(a, *axes):
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    axes = tuple(axes) or tuple(range(a.ndim))[::-1]
    inv = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    return record(a.data.transpose(axes), (a,), lambda g: (g.transpose(inv),))


def _scatter_add(xp, target, index, values):
    """target[index] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add)."""
    if xp.__name__ == "numpy":
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def _is_basic(index) -> bool:
    """True for indices made of ints, slices, None and Ellipsis only (no repeats possible)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


def getitem(a, index):
    """a[index] for basic and advanced indexing; repeated advanced indices accumulate."""
    index = tuple(i.data if isinstance(i, Tensor) else i for i in index) if isinstance(index, tuple) \
        else (index.data if isinstance(index, Tensor) else index)

    basic = _is_basic(index)

    def getitem_vjp(g):
        gx = a.xp.zeros(a.shape, dtype=g.dtype)
        if basic:
            gx[index] = g
        else:
            _scatter_add(a.xp, gx, index, g)
        return (gx,)
    return record(a.data[index], (a,), getitem_vjp)


def flip_sequences(a, lengths):
    """Each sequence of a (B, T, ...) reversed within its length (lengths (B,) ints), the padding past it
    left where it is: what a backward-reading layer of a bidirectional stack sees (flax's flip_sequences).
    The flip is its own inverse, so the VJP is the same flip of the gradient."""
    xp = a.xp
    t = xp.arange(a.shape[1])[None, :]
    n = xp.asarray(lengths).reshape(-1, 1)
    index = xp.where(t < n, n - 1 - t, t).reshape(a.shape[:2] + (1,) * (a.ndim - 2))

    def flip_sequences_vjp(g):
        return (xp.take_along_axis(g, index, axis=1),)
    return record(xp.take_along_axis(a.data, index, axis=1), (a,), flip_sequences_vjp)


def concat(tensors, axis=0):
    ts = [as_tensor(t) for t in tensors]
    xp = ts[0].xp
    ends = list(itertools.accumulate(t.shape[axis] for t in ts))

    def concat_vjp(g):
        return tuple(xp.split(g, ends[:-1], axis=axis))
    return record(xp.concatenate([t.data for t in ts], axis=axis), tuple(ts), concat_vjp)


def stack(tensors, axis=0):
    ts = [as_tensor(t) for t in tensors]
    xp = ts[0].xp

    def stack_vjp(g):
        return tuple(xp.moveaxis(g, axis, 0))
    return record(xp.stack([t.data for t in ts], axis=axis), tuple(ts), stack_vjp)


def broadcast_to(a, shape):
    return record(a.xp.broadcast_to(a.data, shape), (a,), lambda g: (unbroadcast(g, a.shape),))


# ------------------------------------------------------------------------------ Tensor operators
def _install():
    T = Tensor
    T.__add__ = add
    T.__radd__ = lambda a, b: add(b, a)
    T.__sub__ = sub
    T.__rsub__ = lambda a, b: sub(b, a)
    T.__mul__ = mul
    T.__rmul__ = lambda a, b: mul(b, a)
    T.__truediv__ = div
    T.__rtruediv__ = lambda a, b: div(b, a)
    T.__pow__ = pow
    T.__neg__ = neg
    T.__matmul__ = matmul
    T.__getitem__ = getitem
    T.sum, T.mean, T.max = sum, mean, max
    T.reshape, T.transpose = reshape, transpose
    T.T = property(lambda a: transpose(a))
    T.exp, T.log, T.tanh, T.sigmoid, T.relu = exp, log, tanh, sigmoid, relu


_install()
