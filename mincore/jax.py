"""mincore's kernels inside JAX: `scan`, `min_gru`, `min_lstm` and `lru_scan` as `jax.custom_vjp`
functions that work under `jax.jit`, `jax.grad` and `jax.vmap` (extra `mincore[jax]`).

Same names, arguments and defaults as the NumPy API (`mincore.scan` ...), differentiable in every array
argument (h0 and lam included). Forward and backward each call the NumPy API once, on the host, through
`jax.pure_callback`: the engine it picks for NumPy arrays (numba unless MINCORE_ENGINE says otherwise).
Each function is jitted per shape, dtype and flags, so a call outside `jax.jit` costs a cache lookup
after the first, not a trace. NumPy inputs are converted as the NumPy API converts them and put on the
CPU device.

The price of the callback: JAX copies every array passed to it (into a new CPU array) and every
result (into XLA's buffer). At large sizes this costs more than the kernels: minGRU forward + backward
at (64, 4096, 256) float32 passes six (B, T, D) arrays in and three out (benchmarks/jax_adapter.py,
figures in docs/INTEROP.md). The backward gets only what its adjoint reads (not scan's b or the LRU's
bu).

Why `jax.pure_callback` and not the XLA FFI, which would pass XLA's buffers without a copy: an FFI
target is a native handler that XLA calls with a C call frame. mincore's kernels are numba functions
compiled at run time and mincore ships no compiled extension, so an FFI target means either a C++ build
against XLA's FFI headers for every platform and Python version, or a handler made at run time (numba
`cfunc` or ctypes) that reads XLA's call-frame structs by hand and so breaks when their C ABI changes.
`pure_callback` is public, stable API and needs neither.

Complex gradients (`lru_scan`): mincore returns dL/dRe + i dL/dIm (PyTorch's convention); JAX's
cotangents are the conjugates of those, so the backward conjugates the cotangent on the way in and the
gradients on the way out.

`jax.vmap`: the callback gets the mapped axes in front of each argument (vmap_method="expand_dims") and
folds them into the batch axis B, so the kernels run once on the whole batch; where that would change
the result (`lru_scan` with lam mapped, and its backward, whose dlam sums over B) it calls the kernel
once per mapped index instead.

GPU and TPU arrays are refused with a ValueError. A callback runs on the host: XLA would copy every
input from the device and every result back, synchronising at each call. Reaching mincore's CuPy
kernels without that round trip needs an XLA FFI target that launches them on XLA's CUDA stream with
XLA's device buffers; XLA can only call native code there, while the CuPy kernels are compiled by NVRTC
and launched from Python at run time (and the FFI objection above applies). The check runs on concrete
arrays at the call and, under `jax.jit`, when XLA compiles for a platform other than the CPU (a tracer
carries no device).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import mincore

from . import checks

__all__ = ["scan", "min_gru", "min_lstm", "lru_scan"]


def scan(a, b, h0=None, *, reverse=False):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = h0 (reverse=True: t = T-1 .. 0 with h_T = h0), as
    `mincore.scan`; a, b: (B, T, D), h0: (B, D) or None (zeros)."""
    args = _sequences(checks.REAL, h0, a=a, b=b)
    return _op("scan", checks.flag("reverse", reverse))(*args)


def min_gru(k, v, h0=None, *, log_space=False):
    """minGRU over a whole sequence, as `mincore.min_gru`: z = sigmoid(k), h~ = v (log_space: g(v)),
    h_t = (1 - z_t) h_{t-1} + z_t h~_t; k, v: (B, T, D), h0: (B, D) or None (zeros)."""
    args = _sequences(checks.REAL, h0, k=k, v=v)
    return _op("min_gru", checks.flag("log_space", log_space))(*args)


def min_lstm(kf, ki, v, h0=None, *, normalize=True, log_space=False):
    """minLSTM over a whole sequence, as `mincore.min_lstm`; kf, ki, v: (B, T, D), h0: (B, D) or None."""
    args = _sequences(checks.REAL, h0, kf=kf, ki=ki, v=v)
    return _op("min_lstm", checks.flag("normalize", normalize), checks.flag("log_space", log_space))(*args)


def lru_scan(lam, bu, h0=None):
    """LRU recurrence h_t = lam * h_{t-1} + bu_t, as `mincore.lru_scan`: complex64 or complex128,
    lam (D,), bu (B, T, D), h0 (B, D) or None (zeros)."""
    bu, h0 = _sequences(tuple(checks.COMPLEX), h0, bu=bu)
    lam = _array("lam", lam, 1)
    if lam.shape != bu.shape[2:] or lam.dtype != bu.dtype:
        raise ValueError(f"lam: expected shape (D,) = ({bu.shape[2]},) and dtype {bu.dtype}, "
                         f"got shape {tuple(lam.shape)} dtype {lam.dtype}")
    return _op("lru_scan")(lam, bu, h0)


# --------------------------------------------------------------------------------------------
# inputs: the NumPy API's checks and messages, on shapes and dtypes (tracers have no data)


def _array(name: str, x, ndim: int):
    """A JAX array (or tracer) of `ndim` dimensions. NumPy arrays go through the NumPy API's input
    conversion and onto the CPU device, where the kernels run."""
    if isinstance(x, np.ndarray):
        x = jax.device_put(checks.as_input(name, x, ndim), jax.devices("cpu")[0])
    elif not isinstance(x, jax.Array):
        raise TypeError(f"{name}: expected a JAX or NumPy array, got {type(x).__name__}")
    elif not isinstance(x, jax.core.Tracer):
        _check_devices(name, x)
    if x.ndim != ndim:
        want = {1: "(D,)", 2: "(B, D)", 3: "(B, T, D)"}[ndim]
        raise ValueError(f"{name}: expected {ndim} dimensions {want}, got shape {tuple(x.shape)} "
                         f"dtype {x.dtype}")
    return x


def _sequences(dtypes, h0, **named):
    """The (B, T, D) sequences, checked as `mincore.checks.sequences` does, then h0 ((B, D), zeros for
    None) of their dtype. Returns them in order, h0 last."""
    seqs = {name: _array(name, x, 3) for name, x in named.items()}
    (B, _, D), dtype = checks.sequences(dtypes, **seqs)
    if h0 is None:
        return (*seqs.values(), jnp.zeros_like(next(iter(seqs.values())), shape=(B, D)))
    h0 = _array("h0", h0, 2)
    if tuple(h0.shape) != (B, D):
        raise ValueError(f"h0: expected shape (B, D) = {(B, D)}, got {tuple(h0.shape)}")
    if h0.dtype != dtype:
        raise TypeError(f"h0: dtype {h0.dtype} does not match the sequences' dtype {dtype}")
    return (*seqs.values(), h0)


# --------------------------------------------------------------------------------------------
# the operations: host kernels with one signature each, forward(*args) -> h and
# backward(*used args, h, dh) -> one gradient per argument; RANKS: the core rank of each argument;
# USED: the arguments the backward reads (every array passed to a callback is copied, so b and bu,
# which the adjoint does not read, are neither passed nor kept for it)


RANKS = {"scan": (3, 3, 2), "min_gru": (3, 3, 2), "min_lstm": (3, 3, 3, 2), "lru_scan": (1, 3, 2)}
NAMES = {"scan": ("a", "b", "h0"), "min_gru": ("k", "v", "h0"), "min_lstm": ("kf", "ki", "v", "h0"),
         "lru_scan": ("lam", "bu", "h0")}
USED = {"scan": (True, False, True), "min_gru": (True, True, True), "min_lstm": (True, True, True, True),
        "lru_scan": (True, False, True)}


def _kernels(name: str, *flags):
    """(forward, backward) on NumPy arrays, calling the NumPy API."""
    if name == "scan":
        (reverse,) = flags
        return (lambda a, b, h0: mincore.scan(a, b, h0, reverse=reverse),
                lambda a, h0, h, dh: mincore.scan_backward(a, h, dh, h0, reverse=reverse))
    if name == "min_gru":
        (log_space,) = flags
        return (lambda k, v, h0: mincore.min_gru(k, v, h0, log_space=log_space),
                lambda k, v, h0, h, dh: mincore.min_gru_backward(k, v, h, dh, h0, log_space=log_space))
    if name == "min_lstm":
        kw = dict(zip(("normalize", "log_space"), flags, strict=True))
        return (lambda kf, ki, v, h0: mincore.min_lstm(kf, ki, v, h0, **kw),
                lambda kf, ki, v, h0, h, dh: mincore.min_lstm_backward(kf, ki, v, h, dh, h0, **kw))

    def lru_backward(lam, h0, h, dh):
        # JAX's cotangents are the conjugates of mincore's dL/dRe + i dL/dIm, both ways
        return tuple(np.conj(g) for g in mincore.lru_scan_backward(lam, h, np.conj(dh), h0))
    return (lambda lam, bu, h0: mincore.lru_scan(lam, bu, h0)), lru_backward


@functools.cache
def _op(name: str, *flags):
    """The custom_vjp function of operation `name` with its static flags (one per combination)."""
    forward, backward = _kernels(name, *flags)
    ranks, names, used = RANKS[name], NAMES[name], USED[name]

    def keep(xs):
        return tuple(x for x, u in zip(xs, used, strict=True) if u)

    @jax.custom_vjp
    def op(*args):
        (h,) = _host(forward, names, ranks, (_like(args[-2]),), args)
        return h

    def op_fwd(*args):
        h = op(*args)
        return h, (keep(args), h)

    def op_bwd(res, dh):
        kept, h = res
        it = iter(kept)  # an unused argument (b, bu) has h's shape and dtype
        specs = tuple(_like(next(it) if u else h) for u in used)
        return _host(backward, (*keep(names), "h", "dh"), (*keep(ranks), 3, 3), specs, (*kept, h, dh))

    op.defvjp(op_fwd, op_bwd)
    return jax.jit(op)


def _like(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _host(kernel, names, ranks, specs, args):
    """Run `kernel` on the host through jax.pure_callback, after the device check (_on_host)."""
    args = _on_host_p.bind(*args, names=tuple(names))
    call = functools.partial(_batched, kernel, ranks, specs)
    # expand_dims: under vmap the callback gets each argument with the mapped axes in front (size 1
    # where an argument is not mapped), so it can fold them into B (_batched)
    return tuple(jax.pure_callback(call, specs, *args, vmap_method="expand_dims"))


def _batched(kernel, ranks, specs, *args):
    """kernel on arguments with `ranks` core dimensions and equal numbers of leading (mapped) axes.
    The mapped axes fold into B when every (D,) argument is unmapped and no result is (D,) (a sum
    over B); otherwise the kernel runs once per index of the mapped axes."""
    args = [np.asarray(x) for x in args]
    n = args[0].ndim - ranks[0]
    if n == 0:
        return tuple(kernel(*args)) if len(specs) > 1 else (kernel(*args),)
    lead = np.broadcast_shapes(*(x.shape[:n] for x in args))
    if all(x.shape[:n] == (1,) * n for x, r in zip(args, ranks, strict=True) if r == 1) and \
            all(len(s.shape) > 1 for s in specs):
        return _folded(kernel, ranks, specs, lead, args)
    outs = tuple(np.empty(lead + s.shape, s.dtype) for s in specs)
    for index in np.ndindex(*lead):
        got = kernel(*(x[tuple(i if m > 1 else 0 for i, m in zip(index, x.shape[:n], strict=True))]
                       for x in args))
        for o, g in zip(outs, got if len(specs) > 1 else (got,), strict=True):
            o[index] = g
    return outs


def _folded(kernel, ranks, specs, lead, args):
    """One kernel call with the mapped axes folded into B: (*lead, B, ...) -> (prod(lead) * B, ...)."""
    m = int(np.prod(lead))
    folded = []
    for x, r in zip(args, ranks, strict=True):
        core = x.shape[len(lead):]
        if r == 1:
            folded.append(x.reshape(core))
        else:  # broadcast_to + reshape copies only the unmapped arguments
            folded.append(np.broadcast_to(x, lead + core).reshape((m * core[0], *core[1:])))
    got = kernel(*folded)
    got = got if len(specs) > 1 else (got,)
    return tuple(g.reshape(lead + s.shape) for g, s in zip(got, specs, strict=True))


# --------------------------------------------------------------------------------------------
# the device check: an identity primitive that refuses non-CPU arrays when run eagerly and non-CPU
# platforms when XLA compiles it (a tracer under jit carries no device)


def _refuse(name: str, got: str):
    raise ValueError(f"{name}: {got}, but mincore.jax runs mincore's CPU kernels only (through a host "
                     "callback, which would copy every array to the host and back); put the inputs on the "
                     "CPU with jax.device_put(x, jax.devices('cpu')[0]), or call the CuPy API or "
                     "mincore.torch for GPU arrays")


def _check_devices(name: str, x):
    devices = x.devices() if isinstance(x, jax.Array) else ()
    if any(d.platform != "cpu" for d in devices):
        _refuse(name, f"got an array on {', '.join(sorted(str(d) for d in devices))}")


def _on_host_impl(*xs, names):  # run eagerly only under jax.disable_jit()
    for name, x in zip(names, xs, strict=True):
        _check_devices(name, x)
    return xs


def _on_host_lowering(ctx, *xs, names):
    _refuse(names[0], f"the computation is compiled for {', '.join(ctx.module_context.platforms)}")


def _no_second_derivative(primals, tangents, names):
    # only a backward's check is ever differentiated: custom_vjp keeps JAX out of the forward's
    op = next(op for op, first in NAMES.items() if first[0] == names[0])
    raise TypeError(f"mincore.jax.{op}: no second derivatives: its backward runs mincore's kernels in a host "
                    "callback, which JAX cannot differentiate (the functions are differentiable once, in "
                    "reverse mode: jax.grad, jax.vjp)")


_on_host_p = Primitive("mincore_on_host")
_on_host_p.multiple_results = True
_on_host_p.def_impl(_on_host_impl)
_on_host_p.def_abstract_eval(lambda *avals, names: avals)
ad.primitive_jvps[_on_host_p] = _no_second_derivative
batching.primitive_batchers[_on_host_p] = lambda xs, dims, names: (_on_host_p.bind(*xs, names=names), dims)
mlir.register_lowering(_on_host_p, _on_host_lowering)
mlir.register_lowering(_on_host_p, lambda ctx, *xs, names: list(xs), platform="cpu")
