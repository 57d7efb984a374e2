"""Fused network primitives: embedding, layer/RMS norm, dropout, causal depthwise conv, losses.

Fusing a norm or a loss into one primitive keeps the tape short and saves the intermediate arrays a
composition of small ops would store; each VJP below is the closed form of that composition.
Shapes: features on the last axis, any leading axes (typically (B, T, D)).
"""

from __future__ import annotations

import functools

import numpy as np

from .ops import _scatter_add, unbroadcast
from .tensor import Tensor, as_tensor, record

__all__ = ["embedding", "layer_norm", "rms_norm", "dropout", "causal_conv1d", "cross_entropy", "mse",
           "primitive"]


def primitive(fn):
    """Turn `fn(*arrays, **kw) -> (out_array, vjp)` into a Tensor function recorded on the tape.

    Positional arguments may be Tensors, arrays or None (an absent optional input); vjp(g) returns one
    gradient per positional argument (None allowed). Used for the recurrent primitives in
    mincore.layers, and handy for adding a primitive in a few lines (docs/AUTOGRAD.md).
    """
    @functools.wraps(fn)
    def apply(*args, **kw):
        ts = tuple(None if a is None else as_tensor(a) for a in args)
        out, vjp = fn(*(None if t is None else t.data for t in ts), **kw)
        present = tuple(i for i, t in enumerate(ts) if t is not None)

        def primitive_vjp(g):
            grads = vjp(g)
            return tuple(grads[i] if ts[i].requires_grad else None for i in present)
        return record(out, tuple(ts[i] for i in present), primitive_vjp)
    return apply


def embedding(weight: Tensor, idx):
    """weight[idx]: (V, D) table, integer idx of any shape -> idx.shape + (D,). dW scatter-adds g."""
    idx = idx.data if isinstance(idx, Tensor) else idx

    def embedding_vjp(g):
        xp, flat, g2 = weight.xp, idx.reshape(-1), g.reshape(-1, g.shape[-1])
        gw = xp.zeros(weight.shape, dtype=g.dtype)
        if xp is np and flat.size:  # sort + segment sums: ~3x faster than np.add.at on CPU
            order = np.argsort(flat, kind="stable")
            s = flat[order]
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            gw[s[starts]] = np.add.reduceat(g2[order], starts, axis=0)
        else:
            _scatter_add(xp, gw, flat, g2)
        return (gw,)
    return record(weight.data[idx], (weight,), embedding_vjp)


def _leading_sum(g):
    return g.reshape(-1, g.shape[-1]).sum(axis=0)


def _rowdot(xp, a, b):
    """sum_i a[..., i] b[..., i] with a trailing axis of 1 (one pass, no temporary)."""
    return xp.einsum("...i,...i->...", a, b)[..., None]


def _coldot(xp, a, b):
    """sum over all leading axes of a * b -> (D,) (the gain gradient), without a temporary."""
    return xp.einsum("ni,ni->i", a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None, eps: float = 1e-5):
    """y = (x - mu) / sqrt(var + eps) * w + b over the last axis (Ba et al. 2016).

    VJP with xh = normalised x, r = 1/sqrt(var + eps), gh = g w:
        dx = r (gh - mean(gh) - xh mean(gh xh)),  dw = sum g xh,  db = sum g.
    """
    xd, xp, D = x.data, x.xp, x.shape[-1]
    xc = xd - xd.mean(axis=-1, keepdims=True)
    r = 1.0 / xp.sqrt(_rowdot(xp, xc, xc) / D + eps)
    xh = xc
    xh *= r
    out = xh * w.data if w is not None else xh.copy()
    if b is not None:
        out += b.data
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def layer_norm_vjp(g):
        gh = g * w.data if w is not None else g
        dx = xh * (_rowdot(xp, gh, xh) / D)
        dx += gh.mean(axis=-1, keepdims=True)
        xp.subtract(gh, dx, out=dx)
        dx *= r
        grads = [dx]
        if w is not None:
            grads.append(_coldot(xp, g, xh))
        if b is not None:
            grads.append(_leading_sum(g))
        return tuple(grads)
    return record(out, inputs, layer_norm_vjp)


def rms_norm(x: Tensor, w: Tensor | None, eps: float = 1e-6):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis (Zhang & Sennrich 2019).

    VJP: dx = r (gh - xh mean(gh xh)), dw = sum g xh, with xh = x r, gh = g w.
    """
    xd, xp, D = x.data, x.xp, x.shape[-1]
    r = 1.0 / xp.sqrt(_rowdot(xp, xd, xd) / D + eps)
    xh = xd * r

    def rms_norm_vjp(g):
        gh = g * w.data if w is not None else g
        dx = xh * (_rowdot(xp, gh, xh) / D)
        xp.subtract(gh, dx, out=dx)
        dx *= r
        return (dx,) if w is None else (dx, _coldot(xp, g, xh))
    return record(xh * w.data if w is not None else xh, (x,) if w is None else (x, w), rms_norm_vjp)


def dropout(x: Tensor, p: float, rng=None, training: bool = True):
    """Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p).

    rng: numpy Generator (the mask for CuPy arrays is drawn on the device from a seed it supplies).
    On the CPU the mask compares 16 random bits with round(p 2^16) (several times cheaper than
    float draws), so the drop probability is p rounded to a multiple of 2^-16; the scale uses it.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    xp = x.xp
    rng = np.random.default_rng() if rng is None else rng
    if xp is np:
        cut = round(p * 65536)
        u = np.frombuffer(rng.bytes(2 * x.size), dtype=np.uint16).reshape(x.shape)
        keep, scale = u >= cut, 65536 / (65536 - cut)
    else:
        u = xp.random.default_rng(int(rng.integers(2**63))).random(x.shape, dtype=xp.float32)
        keep, scale = u >= p, 1.0 / (1.0 - p)  # boolean masks: 1 byte per element kept for backward
    out = x.data * keep
    out *= scale

    def dropout_vjp(g):
        gx = g * keep
        gx *= scale
        return (gx,)
    return record(out, (x,), dropout_vjp)


def causal_conv1d(x: Tensor, w: Tensor, b: Tensor | None = None, prefix=None):
    """Causal depthwise convolution over time: x (B, T, C), w (K, C), b (C,).

        y_t = b + sum_k w_k * x_{t - K + 1 + k}     (k = 0 .. K-1; x_s for s < 0 from `prefix`)

    prefix: the K-1 inputs before x (B, K-1, C), zeros when None; passing the last K-1 inputs of one
    chunk as the prefix of the next makes chunked (and T = 1 step) evaluation equal one pass.
    VJP: dx_pad[:, k:k+T] += w_k g, dw_k = sum_{b,t} g x_pad[:, k:k+T], db = sum g.
    """
    xp = x.xp
    B, T, C = x.shape
    K = w.shape[0]
    pre = xp.zeros((B, K - 1, C), dtype=x.dtype) if prefix is None else as_tensor(prefix).data
    xpad = xp.concatenate([pre, x.data], axis=1)
    wd = w.data
    out = xpad[:, K - 1:] * wd[K - 1]
    for k in range(K - 1):
        out += xpad[:, k:k + T] * wd[k]
    if b is not None:
        out += b.data
    inputs = [x, w] + ([b] if b is not None else [])
    if isinstance(prefix, Tensor):
        inputs.append(prefix)

    def causal_conv1d_vjp(g):
        dpad = xp.zeros_like(xpad)
        g2 = g.reshape(-1, C)
        dw = xp.empty_like(wd)
        for k in range(K):
            dpad[:, k:k + T] += g * wd[k]
            dw[k] = xp.einsum("nc,nc->c", g2, xpad[:, k:k + T].reshape(-1, C))
        grads = [dpad[:, K - 1:], dw]
        if b is not None:
            grads.append(g2.sum(axis=0))
        if isinstance(prefix, Tensor):
            grads.append(dpad[:, :K - 1])
        return tuple(grads)
    return record(out, tuple(inputs), causal_conv1d_vjp)


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, mask=None):
    """Mean of -log softmax(logits)[target] over the positions that count, computed stably.

    logits (..., V); targets integer (...); positions with target == ignore_index, or mask False,
    are left out (mean over the rest; 0 when none count). VJP: (softmax - onehot(target)) / n.
    """
    xp = logits.xp
    V = logits.shape[-1]
    z = logits.data.reshape(-1, V)
    t = (targets.data if isinstance(targets, Tensor) else xp.asarray(targets)).reshape(-1)
    valid = t != ignore_index
    if mask is not None:
        valid &= (mask.data if isinstance(mask, Tensor) else xp.asarray(mask)).reshape(-1).astype(bool)
    ts = xp.where(valid, t, 0)
    n = int(valid.sum())
    zs = z - z.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(zs).sum(axis=1))
    rows = xp.arange(z.shape[0])
    nll = (lse - zs[rows, ts]) * valid
    loss = nll.sum() / max(n, 1)

    def cross_entropy_vjp(g):
        p = xp.exp(zs - lse[:, None])
        p[rows, ts] -= 1
        p *= (valid * (g / max(n, 1))).astype(p.dtype)[:, None]
        return (p.reshape(logits.shape),)
    return record(xp.asarray(loss, dtype=logits.dtype), (logits,), cross_entropy_vjp)


def mse(pred: Tensor, target, mask=None):
    """Mean squared error mean((pred - target)^2) over the masked-in elements (target broadcasts)."""
    pred, target = as_tensor(pred), as_tensor(target, like=as_tensor(pred))
    d = pred.data - target.data
    m = None if mask is None else (mask.data if isinstance(mask, Tensor) else mask).astype(d.dtype)
    if m is not None:
        m = pred.xp.broadcast_to(m, d.shape)
    n = max(float(m.sum()) if m is not None else d.size, 1.0)
    dm = d if m is None else d * m

    def mse_vjp(g):
        gd = (2.0 / n) * g * dm
        return (gd if pred.requires_grad else None,
                unbroadcast(-gd, target.shape) if target.requires_grad else None)
    return record(pred.xp.asarray((dm * d).sum() / n, dtype=pred.dtype), (pred, target), mse_vjp)
