"""Input validation for the public array API: every message names the argument, what it got and
what was expected, so a user never has to read a kernel to find out what went wrong."""

from __future__ import annotations

import numpy as np

from .backend import get_array_module

REAL = (np.dtype(np.float32), np.dtype(np.float64))
# float16 is storage only (float32 accumulation): accepted for sequences, then refused by
# engine_dtype for every engine whose DTYPES lacks it (today all but "cupy")
SEQ_REAL = (np.dtype(np.float16), *REAL)
COMPLEX = {np.dtype(np.complex64): np.dtype(np.float32), np.dtype(np.complex128): np.dtype(np.float64)}


def _desc(x) -> str:
    mod = type(x).__module__.split(".")[0]
    return f"{mod}.{type(x).__name__} shape {tuple(x.shape)} dtype {x.dtype}"


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.split(".")[0] == "cupy"


def _ndim(name: str, x, ndim: int):
    if x.ndim != ndim:
        want = {1: "(D,)", 2: "(B, D)", 3: "(B, T, D)"}[ndim]
        raise ValueError(f"{name}: expected {ndim} dimensions {want}, got {_desc(x)}")


def as_input(name: str, x, ndim: int):
    """An input as the kernels take it: a NumPy/CuPy array of `ndim` dimensions, C-contiguous, native
    byte order. Strided views, Fortran order, other byte orders and objects exposing only
    __array_interface__ are converted once; masked arrays are refused (their masks would be ignored)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name}: masked arrays are not supported (the mask would be ignored); pass "
                        f"{name}.filled(value) or {name}.data")
    if not _is_array(x):
        if not hasattr(x, "__array_interface__") and not hasattr(x, "__array__"):
            raise TypeError(f"{name}: expected a numpy or cupy array, got {type(x).__name__}")
        x = np.asarray(x)
    _ndim(name, x, ndim)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    xp = get_array_module(x)
    return x if x.flags.c_contiguous else xp.ascontiguousarray(x)


def array(name: str, x, ndim: int):
    """An output (`out=`) array: NumPy/CuPy, `ndim` dimensions, C-contiguous and writeable (the
    kernels write it in place, so nothing is converted)."""
    if not _is_array(x):
        raise TypeError(f"{name}: expected a numpy or cupy array, got {type(x).__name__}")
    _ndim(name, x, ndim)
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got a strided view ({_desc(x)}); "
                         "the result is written in place, so pass a contiguous array")
    if not getattr(x.flags, "writeable", True):
        raise ValueError(f"{name}: the array is read-only ({_desc(x)}); pass a writeable array")
    return x


def same_module(**named):
    """All arrays from one array module: NumPy and CuPy are never mixed silently."""
    mods = {k: get_array_module(v).__name__ for k, v in named.items() if v is not None}
    if len(set(mods.values())) > 1:
        got = ", ".join(f"{k}={m}" for k, m in mods.items())
        raise TypeError(f"arrays from different array modules ({got}); move them to one device with "
                        "cupy.asarray(x) or cupy.asnumpy(x)")
    return get_array_module(*[v for v in named.values() if v is not None])


def inputs(ndim: int, **named) -> dict:
    """`as_input` on every named array (None passes through)."""
    return {k: None if x is None else as_input(k, x, ndim) for k, x in named.items()}


def sequences(dtypes=SEQ_REAL, **named):
    """(B, T, D) arrays (already `as_input`) of one shape and one dtype from `dtypes`. Returns
    (shape, dtype)."""
    first = None
    for name, x in named.items():
        if x.dtype not in dtypes:
            raise TypeError(f"{name}: expected dtype {' or '.join(str(d) for d in dtypes)}, got {x.dtype}")
        if first is None:
            first = (name, x)
            continue
        n0, x0 = first
        if x.shape != x0.shape:
            raise ValueError(f"{name}: shape {tuple(x.shape)} does not match {n0} shape {tuple(x0.shape)}")
        if x.dtype != x0.dtype:
            raise TypeError(f"{name}: dtype {x.dtype} does not match {n0} dtype {x0.dtype} "
                            "(mixed precision is not converted silently; cast one of them)")
    return first[1].shape, first[1].dtype


def state(name: str, h0, shape, dtype, xp):
    """h0 of shape (B, D) and the sequences' dtype, or None meaning zeros (materialised here)."""
    B, _, D = shape
    if h0 is None:
        return xp.zeros((B, D), dtype=dtype)
    h0 = as_input(name, h0, 2)
    if tuple(h0.shape) != (B, D):
        raise ValueError(f"{name}: expected shape (B, D) = {(B, D)}, got {tuple(h0.shape)}")
    if h0.dtype != dtype:
        raise TypeError(f"{name}: dtype {h0.dtype} does not match the sequences' dtype {dtype}")
    return h0


def outputs(name: str, out, like: dict, inputs: dict, xp):
    """`out`: None, or arrays matching `like` (name -> (shape, dtype)) one for one, from module xp,
    C-contiguous and sharing no memory with any input (the kernels read inputs after writing outputs).
    Returns a tuple (or None)."""
    if out is None:
        return None
    single = len(like) == 1
    outs = (out,) if single and not isinstance(out, tuple) else out
    if not isinstance(outs, tuple) or len(outs) != len(like):
        raise TypeError(f"{name}: expected {'an array' if single else f'a tuple of {len(like)} arrays'} "
                        f"({', '.join(like)}), got {type(out).__name__}")
    for o, (what, (shape, dtype)) in zip(outs, like.items(), strict=True):
        label = name if single else f"{name} ({what})"
        array(label, o, len(shape))
        if get_array_module(o) is not xp:
            raise TypeError(f"{label}: expected a {xp.__name__} array like the inputs, got {_desc(o)}")
        if tuple(o.shape) != tuple(shape) or o.dtype != dtype:
            raise ValueError(f"{label}: expected shape {tuple(shape)} dtype {dtype}, got {_desc(o)}")
        for iname, x in inputs.items():
            if x is not None and xp.may_share_memory(o, x):
                raise ValueError(f"{label}: shares memory with input {iname}; pass a separate array")
    names = list(like)
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            if outs[i] is outs[j] or xp.may_share_memory(outs[i], outs[j]):
                raise ValueError(f"{name}: outputs {names[i]} and {names[j]} share memory; the output arrays "
                                 "must be distinct, non-overlapping arrays")
    return outs


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def engine_dtype(engine_name: str, impl, dtype, name: str):
    """The sequences' dtype (argument `name` stands for them) must be one the engine supports."""
    real = COMPLEX.get(dtype, dtype)
    if real not in tuple(np.dtype(d) for d in impl.DTYPES):
        raise TypeError(f"{name}: dtype {dtype} is not supported by engine {engine_name!r} "
                        f"(it supports {list(impl.DTYPES)})")


def step_inputs(**named):
    """(B, D) arrays (already `as_input`) of one shape and one real dtype for the *_step functions."""
    first = None
    for name, x in named.items():
        if x.dtype not in REAL:
            raise TypeError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
        if first is not None and (x.shape != first[1].shape or x.dtype != first[1].dtype):
            raise ValueError(f"{name}: {_desc(x)} does not match {first[0]}: {_desc(first[1])}")
        first = first or (name, x)
    return same_module(**named)
