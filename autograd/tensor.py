"""Tensor and tape: reverse-mode automatic differentiation over NumPy or CuPy arrays.

A primitive computes its output array and a closure `vjp(g) -> (grad per input)` (None where an
input needs no gradient) and hands both to `record`. While gradients are enabled and some input
requires a gradient, the output Tensor keeps (inputs, vjp, seq): these nodes are the tape, and `seq`
(a global creation counter) orders it, since an output is always created after its inputs.
`backward()` collects the nodes reachable from the loss, walks them in reverse creation order and
calls each vjp once with the summed gradient of its output (the chain rule: dL/dx = sum over uses of
vjp_use(dL/dy)). Leaf tensors accumulate `.grad` across backward calls (zero it in the optimizer).
After a backward the visited nodes drop their closures (and the arrays the closures saved) unless
`retain_graph=True`; a second backward through them raises a RuntimeError.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np

from mincore.backend import get_array_module

__all__ = ["Tensor", "Parameter", "tensor", "no_grad", "enable_grad", "is_grad_enabled", "record",
           "as_tensor", "as_array"]

_state = {"enabled": True}
_seq = itertools.count()


def is_grad_enabled() -> bool:
    return _state["enabled"]


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    prev = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = prev


def no_grad():
    """Context manager (and decorator via contextlib) that stops recording: outputs need no grad."""
    return _grad_mode(False)


def enable_grad():
    return _grad_mode(True)


class Tensor:
    """An xp array (`.data`) with an optional gradient (`.grad`, same shape) and its tape node."""

    __slots__ = ("data", "grad", "requires_grad", "_inputs", "_vjp", "_seq", "__weakref__")
    __array_priority__ = 100  # numpy_scalar * Tensor dispatches to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "dtype") or isinstance(data, np.generic):
            data = np.asarray(data, dtype=np.float32 if type(data) is float else None)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._inputs = ()
        self._vjp = None
        self._seq = -1

    # ---------------------------------------------------------------- array-like attributes
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    xp = property(lambda self: get_array_module(self.data))
    is_leaf = property(lambda self: self._seq < 0)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag})"

    def numpy(self):
        """A NumPy copy of the data (device to host for CuPy)."""
        d = self.data
        return d.get() if hasattr(d, "get") else np.array(d)

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.size == 1 else self._not_scalar("item()")

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def _not_scalar(self, what):
        raise ValueError(f"{what}: tensor of shape {self.shape} is not a scalar")

    # ---------------------------------------------------------------- reverse mode
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate dL/dx into `.grad` of every leaf that requires it (L = this tensor).

        grad: seed dL/dself, required unless this tensor has a single element.
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad (no input required a "
                               "gradient, or it was computed under no_grad())")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward(): tensor of shape {self.shape} is not a scalar; pass a "
                                   "seed gradient of the same shape: t.backward(grad)")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): seed gradient shape {grad.shape} != tensor shape {self.shape}")
        nodes = _reachable(self)
        grads = {id(self): grad}
        for node in nodes:  # reverse creation order: every use of a node is processed before it
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:
                raise RuntimeError("backward(): trying to backward through the graph a second time (its "
                                   "saved arrays were freed by the first backward); call "
                                   "backward(retain_graph=True) the first time, or recompute the forward")
            for x, gx in zip(node._inputs, node._vjp(g), strict=True):
                if gx is None or not x.requires_grad:
                    continue
                if x._seq < 0:  # leaf: accumulate into .grad (never in place: gx may alias others)
                    x.grad = gx if x.grad is None else x.grad + gx
                else:
                    k = id(x)
                    grads[k] = gx if k not in grads else grads[k] + gx
            if not retain_graph:  # free the saved arrays and the links that keep activations alive
                node._vjp, node._inputs = None, ()
        if self._seq < 0:  # backward on a leaf itself
            self.grad = grad if self.grad is None else self.grad + grad

    # operators are attached by mincore.autograd.ops (they need the primitives)


class Parameter(Tensor):
    """A leaf Tensor that requires a gradient; `no_decay` marks it for AdamW groups without decay."""

    __slots__ = ("no_decay",)

    def __init__(self, data, no_decay: bool = False):
        super().__init__(data, requires_grad=True)
        self.no_decay = bool(no_decay)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


def _reachable(root: Tensor) -> list:
    """Non-leaf tensors reachable from root, newest first (iterative: graphs can be deep)."""
    seen, stack, out = {id(root)}, [root], []
    while stack:
        t = stack.pop()
        if t._seq < 0:
            continue
        out.append(t)
        for x in t._inputs:
            if x.requires_grad and id(x) not in seen:
                seen.add(id(x))
                stack.append(x)
    out.sort(key=lambda t: t._seq, reverse=True)
    return out


def record(out, inputs: tuple, vjp) -> Tensor:
    """Wrap the primitive's output array; keep (inputs, vjp) when a gradient can flow through."""
    t = Tensor(out)
    if _state["enabled"] and any(x.requires_grad for x in inputs):
        t.requires_grad = True
        t._inputs = inputs
        t._vjp = vjp
        t._seq = next(_seq)
    return t


def tensor(data, dtype=None, requires_grad: bool = False, xp=np) -> Tensor:
    """A new Tensor from array-like data (float lists become float32 unless dtype says otherwise)."""
    arr = xp.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not hasattr(data, "dtype"):
        arr = arr.astype(np.float32)
    return Tensor(arr, requires_grad=requires_grad)


def as_array(x):
    return x.data if isinstance(x, Tensor) else x


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """x as a Tensor; Python scalars take the dtype of `like`. Raises on NumPy/CuPy mixing."""
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, (int, float, np.generic)) and like is not None:
        t = Tensor(like.xp.asarray(x, dtype=like.dtype))
    else:
        t = Tensor(x)
    if like is not None and type(t.data).__module__.split(".")[0] != type(like.data).__module__.split(".")[0]:
        raise TypeError(f"cannot combine a {type(t.data).__module__} array with a "
                        f"{type(like.data).__module__} array; move one with cupy.asarray / cupy.asnumpy")
    return t
