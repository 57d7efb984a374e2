"""Modules: containers of Parameters with train/eval mode, state_dict and the standard layers.

A Module finds its parameters and submodules by looking at its attributes (in definition order),
including lists/tuples of Modules, so `named_parameters()` gives stable dotted names such as
"blocks.0.rnn.to_hidden.weight". Weights of Linear are stored (in, out) so x @ W needs no transpose.
Initialisers follow PyTorch's defaults (Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Embedding:
N(0, 1)) and take a numpy Generator so a seed fixes every weight.
"""

from __future__ import annotations

import math

import numpy as np

from . import functional as F
from . import ops
from .tensor import Parameter, Tensor, as_tensor

__all__ = ["Module", "StateDictError", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "Dropout",
           "CausalConv1d", "MLP", "GLU"]


class StateDictError(ValueError, KeyError):
    """A state dict whose names do not match the model's parameters: a ValueError, and a KeyError for
    callers that catch missing names as such."""

    __str__ = ValueError.__str__  # KeyError's __str__ would print the message as a quoted repr


def _rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


def _uniform(rng, shape, bound, dtype=np.float32):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Module:
    """Base class: subclasses set Parameters / Modules as attributes and define forward()."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _children(self):
        for name, v in vars(self).items():
            if isinstance(v, (Parameter, Module)):
                yield name, v
            elif isinstance(v, (list, tuple)) and v and all(isinstance(m, Module) for m in v):
                for i, m in enumerate(v):
                    yield f"{name}.{i}", m

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) pairs, each parameter once, in definition order."""
        seen = set()
        for name, v in self._children():
            full = prefix + name
            if isinstance(v, Parameter):
                if id(v) not in seen:
                    seen.add(id(v))
                    yield full, v
            else:
                for n, p in v.named_parameters(full + "."):
                    if id(p) not in seen:
                        seen.add(id(p))
                        yield n, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for _, v in self._children():
            if isinstance(v, Module):
                yield from v.modules()

    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict:
        """name -> NumPy copy of the parameter (host arrays, so a checkpoint never holds device memory)."""
        return {n: p.numpy().copy() for n, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters in place (keeping their array module and dtype).

        Everything is checked before anything is copied: names (with strict, the state must name
        exactly the parameters: StateDictError lists the missing and the unexpected ones), shapes,
        and dtypes (real numbers only; complex values are refused rather than cast)."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if strict and (missing or unexpected):
            raise StateDictError(f"load_state_dict: the state does not match the model's parameters: "
                                 f"missing {', '.join(missing) or 'none'}; unexpected "
                                 f"{', '.join(unexpected) or 'none'}")
        for n, p in params.items():
            if n not in state:
                continue
            a = state[n]
            if tuple(a.shape) != p.shape:
                raise ValueError(f"load_state_dict: {n} has shape {tuple(a.shape)}, expected {p.shape}")
            if np.dtype(a.dtype).kind not in "biuf":
                raise ValueError(f"load_state_dict: {n} has dtype {a.dtype}, expected real numbers "
                                 f"(the parameter is {np.dtype(p.dtype)})")
        for n, p in params.items():
            if n in state:
                p.data = p.xp.asarray(state[n], dtype=p.dtype).copy()

    def to(self, xp=None, dtype=None):
        """Move every parameter to array module `xp` (numpy or cupy) and/or cast it to `dtype`."""
        for p in self.parameters():
            if xp is not None:
                p.data = xp.asarray(p.data.get() if hasattr(p.data, "get") and xp is np else p.data)
            if dtype is not None:
                p.data = p.data.astype(dtype)
            p.grad = None
        return self

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))


class Linear(Module):
    """y = x W + b with W (in, out)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True, rng=None):
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(d_in)
        self.weight = Parameter(_uniform(rng, (d_in, d_out), bound))
        self.bias = Parameter(_uniform(rng, (d_out,), bound), no_decay=True) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)


class Embedding(Module):
    def __init__(self, num: int, dim: int, rng=None):
        self.weight = Parameter(_rng(rng).standard_normal((num, dim)).astype(np.float32))

    def forward(self, idx):
        return F.embedding(self.weight, idx)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        self.weight = Parameter(np.ones(dim, np.float32), no_decay=True)
        self.bias = Parameter(np.zeros(dim, np.float32), no_decay=True) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = Parameter(np.ones(dim, np.float32), no_decay=True)
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)


class Dropout(Module):
    """Inverted dropout, active only in training mode; draws masks from its own Generator."""

    def __init__(self, p: float = 0.0, rng=None):
        self.p = float(p)
        self.rng = np.random.default_rng() if rng is None else rng

    def forward(self, x):
        return F.dropout(x, self.p, self.rng, self.training)


class CausalConv1d(Module):
    """Causal depthwise conv over time, (B, T, C) -> (B, T, C), kernel K (see F.causal_conv1d).

    forward(x, prefix=None) -> (y, new_prefix): new_prefix holds the last K-1 inputs, so chunks (or
    single steps, T = 1) with the carried prefix equal one pass over the whole sequence.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True, rng=None):
        if kernel_size < 1:
            raise ValueError(f"kernel_size: expected >= 1, got {kernel_size}")
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(kernel_size)  # fan_in of a depthwise filter is K
        self.weight = Parameter(_uniform(rng, (kernel_size, channels), bound))
        self.bias = Parameter(_uniform(rng, (channels,), bound), no_decay=True) if bias else None
        self.kernel_size = kernel_size

    def forward(self, x, prefix=None):
        x = as_tensor(x)
        K, T = self.kernel_size, x.shape[1]
        y = F.causal_conv1d(x, self.weight, self.bias, prefix)
        if K == 1:
            return y, None
        if T >= K - 1:
            new = x[:, T - K + 1:]
        else:
            pre = as_tensor(prefix) if prefix is not None else Tensor(x.xp.zeros(
                (x.shape[0], K - 1, x.shape[2]), dtype=x.dtype))
            new = ops.concat([pre[:, T:], x], axis=1)
        return y, new


class MLP(Module):
    """Linear(dim, hidden) -> GELU -> Linear(hidden, dim) -> dropout (the transformer feed-forward)."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0, rng=None):
        rng = _rng(rng)
        hidden = hidden or 4 * dim
        self.fc1 = Linear(dim, hidden, rng=rng)
        self.fc2 = Linear(hidden, dim, rng=rng)
        self.drop = Dropout(dropout, rng=np.random.default_rng(rng.integers(2**63)))

    def forward(self, x):
        return self.drop(self.fc2(ops.gelu(self.fc1(x))))


class GLU(Module):
    """Gated linear unit as in the LRU block (Orvieto et al. 2023, appendix): a * sigmoid(b),
    (a, b) = split(Linear(dim, 2 dim)(x)); preceded by GELU in the official code (gelu_first)."""

    def __init__(self, dim: int, dropout: float = 0.0, gelu_first: bool = True, rng=None):
        rng = _rng(rng)
        self.proj = Linear(dim, 2 * dim, rng=rng)
        self.drop = Dropout(dropout, rng=np.random.default_rng(rng.integers(2**63)))
        self.gelu_first, self.dim = gelu_first, dim

    def forward(self, x):
        u = self.proj(ops.gelu(x) if self.gelu_first else x)
        return self.drop(u[..., :self.dim] * ops.sigmoid(u[..., self.dim:]))
