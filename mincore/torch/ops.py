"""mincore's scans as PyTorch operators: torch.library custom ops in the namespace `mincore`.

Each function (scan, min_gru, min_lstm, lru_scan) is two custom ops, the forward and its backward,
whose implementations hand the tensors to the public array API (mincore.min_gru, ...) without a copy
and wrap its results back without a copy: CPU tensors as NumPy arrays (numba engine), CUDA tensors
as CuPy arrays through DLPack (cupy engine) on torch's current stream, so nothing waits for the host.
The array API validates every argument, so a bad tensor gets its ValueError / TypeError; only a
strided tensor is copied (once, into the C-contiguous layout the kernels read).

register_autograd makes every tensor input differentiable (h0 and lam included): the forward saves
its output h, the backward op runs the explicit backward kernel on it (nothing is recomputed and no
autograd runs through the scan). register_fake gives shapes and dtypes, so torch.compile keeps the
ops in its graph as opaque calls instead of breaking the graph. Complex gradients (lru_scan) follow
PyTorch's convention dL/dRe + i dL/dIm, which is mincore's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

import mincore
from mincore import checks

__all__ = ["scan", "min_gru", "min_lstm", "lru_scan"]

# dtypes NumPy / CuPy can view without a copy; others (bfloat16, complex32, ...) are refused by name
_VIEWABLE = {torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bool,
             torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}


# ------------------------------------------------------------------------------ tensors <-> arrays
def _array(t):
    """A NumPy (CPU) or CuPy (CUDA) view of tensor t, sharing its memory."""
    if t is None:
        return None
    t = t.detach().resolve_conj().resolve_neg()  # lazy conj/neg bits: materialised only when set
    if t.device.type == "cpu":
        return t.numpy()
    import cupy

    return cupy.from_dlpack(t)


def _tensor(x):
    """The array x as a tensor on its device, sharing its memory."""
    if any(s < 0 for s in x.strides):  # torch has no negative strides
        x = _positive_strides(x)
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else torch.from_dlpack(x)


def _positive_strides(x):
    """x without negative strides. Engines return C-contiguous arrays, where a negative stride can
    only sit on an axis of length 1 (a reversed view, e.g. T = 1 in scan_backward(reverse=True)):
    such a stride is never used, so it is replaced in place; any other array is copied."""
    xp = mincore.get_array_module(x)
    if not x.flags.c_contiguous:
        return x.copy()
    strides = [x.itemsize * int(np.prod(x.shape[i + 1:])) for i in range(x.ndim)]
    return xp.lib.stride_tricks.as_strided(x, x.shape, strides)


@contextlib.contextmanager
def _device(device: torch.device):
    """Run CuPy work for a CUDA tensor on its device and on torch's current stream there, so the
    kernels queue behind torch's own work with no synchronisation; nothing to do on the CPU."""
    if device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


def _call(fn, tensors, **kw):
    """fn(*arrays, **kw) on views of the tensors; its result(s) as tensors (a tuple stays a tuple)."""
    device = next(t.device for t in tensors if t is not None)
    with _device(device):
        out = fn(*(_array(t) for t in tensors), **kw)
        return tuple(_tensor(o) for o in out) if isinstance(out, tuple) else _tensor(out)


# ------------------------------------------------------------------------------ validation
def check_tensors(**named):
    """Every value a tensor (None allowed for h0), on one CPU or CUDA device, of a dtype NumPy/CuPy
    can view. Shapes and dtypes are then checked by the array API with its own messages."""
    first = None
    for name, t in named.items():
        if t is None and name == "h0":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type not in ("cpu", "cuda", "meta"):  # meta: shape inference (register_fake)
            raise TypeError(f"{name}: tensors on device {t.device} are not supported (CPU or CUDA)")
        if t.dtype not in _VIEWABLE:
            raise TypeError(f"{name}: dtype {t.dtype} is not supported (float32, float64; float16 storage "
                            f"on CUDA; complex64, complex128 for lru_scan); cast it, e.g. {name}.float()")
        if first is not None and t.device != first[1].device:
            raise TypeError(f"{name}: on device {t.device}, but {first[0]} is on {first[1].device}; "
                            f"move them to one device with .to(device)")
        first = first or (name, t)


# ------------------------------------------------------------------------------ the op factory
@dataclass(frozen=True)
class _Spec:
    name: str  # the array API function, mincore.<name>; its backward is mincore.<name>_backward
    inputs: tuple[str, ...]  # the tensor inputs before h0
    kept: tuple[str, ...]  # the inputs the backward takes (before h, dh, h0)
    flags: tuple[str, ...]  # keyword-only bool arguments


def _define(spec: _Spec):
    """Register mincore::<name> and mincore::<name>_backward with their fakes and autograd; returns
    the forward op (a CustomOpDef, called with the positional schema order)."""
    flags = "".join(f", bool {f}" for f in spec.flags)
    fwd_schema = f"({', '.join(f'Tensor {x}' for x in spec.inputs)}, Tensor? h0{flags}, str? engine) -> Tensor"
    kept = ", ".join(f"Tensor {x}" for x in spec.kept)
    bwd_schema = (f"({kept}, Tensor h, Tensor dh, Tensor? h0{flags}, str? engine) -> "
                  f"({', '.join('Tensor' for _ in spec.inputs)}, Tensor)")
    n_in, n_kept = len(spec.inputs), len(spec.kept)

    # the array API functions are looked up at call time, so profilers (and tests) can wrap them
    def fwd_impl(*args):
        tensors, flag_values, engine = args[: n_in + 1], args[n_in + 1:-1], args[-1]
        return _call(getattr(mincore, spec.name), tensors, engine=engine,
                     **dict(zip(spec.flags, flag_values, strict=True)))

    def bwd_impl(*args):
        tensors, flag_values, engine = args[: n_kept + 3], args[n_kept + 3:-1], args[-1]
        return _call(getattr(mincore, spec.name + "_backward"), tensors, engine=engine,
                     **dict(zip(spec.flags, flag_values, strict=True)))

    fwd = torch.library.custom_op(f"mincore::{spec.name}", fwd_impl, mutates_args=(), schema=fwd_schema)
    bwd = torch.library.custom_op(f"mincore::{spec.name}_backward", bwd_impl, mutates_args=(),
                                  schema=bwd_schema)

    @fwd.register_fake
    def _(*args):
        return torch.empty_like(args[n_in - 1])  # the (B, T, D) sequence input (b, v, bu)

    @bwd.register_fake
    def _(*args):
        h = args[n_kept]
        grads = [torch.empty_like(args[spec.kept.index(x)]) if x in spec.kept else torch.empty_like(h)
                 for x in spec.inputs]
        return (*grads, h.new_empty((h.shape[0], h.shape[2])))

    def setup_context(ctx, inputs, output):
        kept = [inputs[spec.inputs.index(x)] for x in spec.kept]
        ctx.save_for_backward(*kept, output, inputs[n_in])
        ctx.options = inputs[n_in + 1:]  # flags and engine
        ctx.has_h0 = inputs[n_in] is not None

    def backward(ctx, dh):
        *kept, h, h0 = ctx.saved_tensors
        *grads, dh0 = bwd(*kept, h, dh, h0, *ctx.options)
        return (*grads, dh0 if ctx.has_h0 else None, *(None for _ in ctx.options))

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd


_scan = _define(_Spec("scan", ("a", "b"), ("a",), ("reverse",)))
_min_gru = _define(_Spec("min_gru", ("k", "v"), ("k", "v"), ("log_space",)))
_min_lstm = _define(_Spec("min_lstm", ("kf", "ki", "v"), ("kf", "ki", "v"), ("normalize", "log_space")))
_lru_scan = _define(_Spec("lru_scan", ("lam", "bu"), ("lam",), ()))


# ------------------------------------------------------------------------------ the public functions
def scan(a, b, h0=None, *, reverse=False, engine=None):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = h0 (mincore.scan) on (B, T, D) tensors;
    differentiable in a, b and h0."""
    check_tensors(a=a, b=b, h0=h0)
    return _scan(a, b, h0, checks.flag("reverse", reverse), engine)


def min_gru(k, v, h0=None, *, log_space=False, engine=None):
    """minGRU over a whole sequence (mincore.min_gru) on (B, T, D) tensors: h_t = (1 - z_t) h_{t-1} +
    z_t h~_t with z = sigmoid(k), h~ = v (log_space: g(v)); h0 is h_{-1} itself. Differentiable in
    k, v and h0."""
    check_tensors(k=k, v=v, h0=h0)
    return _min_gru(k, v, h0, checks.flag("log_space", log_space), engine)


def min_lstm(kf, ki, v, h0=None, *, normalize=True, log_space=False, engine=None):
    """minLSTM over a whole sequence (mincore.min_lstm) on (B, T, D) tensors; differentiable in kf,
    ki, v and h0."""
    check_tensors(kf=kf, ki=ki, v=v, h0=h0)
    return _min_lstm(kf, ki, v, h0, checks.flag("normalize", normalize), checks.flag("log_space", log_space),
                     engine)


def lru_scan(lam, bu, h0=None, *, engine=None):
    """LRU recurrence h_t = lam * h_{t-1} + bu_t (mincore.lru_scan): complex lam (D,), bu (B, T, D),
    h0 (B, D); differentiable in lam, bu and h0 (gradients dL/dRe + i dL/dIm)."""
    check_tensors(lam=lam, bu=bu, h0=h0)
    return _lru_scan(lam, bu, h0, engine)
