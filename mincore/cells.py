"""The public array API: validate, pick an engine, call it. Shapes are (B, T, D), D contiguous.

Every function works for any T >= 0 and takes an optional initial state h0 of shape (B, D) (None means
zeros). The last state is h[:, -1], so a long sequence can be processed in chunks by carrying it.
h0 is the state h_{-1} itself in every mode: with log_space=True it is not passed through g (the
log-space engine needs it >= 0 then only for speed, not for correctness); a model that learns its
initial state applies g itself, as mincore.layers does.
Backward functions take the forward output h, so nothing is recomputed through autograd.
"""

from __future__ import annotations

from . import checks
from .backend import get_engine
from .kernels import gates


def _setup(engine, h0, dtypes=checks.SEQ_REAL, **seqs):
    """(xp, engine module, h0, *seqs): the inputs as the kernels take them (checks.as_input)."""
    seqs = checks.inputs(3, **seqs)
    xp = checks.same_module(h0=h0, **seqs)
    shape, dtype = checks.sequences(dtypes, **seqs)
    name, impl = get_engine(engine, xp)
    checks.engine_dtype(name, impl, dtype, next(iter(seqs)))
    return xp, impl, checks.state("h0", h0, shape, dtype, xp), *seqs.values()


def scan(a, b, h0=None, *, reverse=False, engine=None, out=None):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = h0; reverse=True runs t = T-1 .. 0 with h_T = h0.
    out: an optional preallocated h, as `min_gru`'s."""
    xp, impl, h0, a, b = _setup(engine, h0, a=a, b=b)
    outs = checks.outputs("out", out, {"h": _like(a)}, {"a": a, "b": b, "h0": h0}, xp)
    return _call(xp, impl, "scan", outs, a, b, h0, checks.flag("reverse", reverse))


def scan_backward(a, h, dh, h0=None, *, reverse=False, engine=None, out=None):
    """Adjoint of `scan` given its output h and dL/dh: returns (da, db, dh0).

    G_t = dh_t + a_{t+1} G_{t+1}; db = G; da_t = G_t h_{t-1}; dh0 = a_0 G_0 (forward direction).
    reverse=True is the adjoint of scan(..., reverse=True) (the same computation on flipped time).
    out: optional preallocated (da, db, dh0), as `min_gru`'s.
    """
    xp, impl, h0, a, h, dh = _setup(engine, h0, a=a, h=h, dh=dh)
    like = {"da": _like(a), "db": _like(a), "dh0": _like(h0)}
    outs = checks.outputs("out", out, like, {"a": a, "h": h, "dh": dh, "h0": h0}, xp)
    if checks.flag("reverse", reverse):
        def flip(x):
            return xp.ascontiguousarray(x[:, ::-1])
        da, db, dh0 = impl.scan_backward(flip(a), flip(h), flip(dh), h0)
        got = flip(da), flip(db), dh0
        return got if outs is None else _copy_into(xp, outs, got)
    return _call(xp, impl, "scan_backward", outs, a, h, dh, h0)


def min_gru(k, v, h0=None, *, log_space=False, engine=None, out=None):
    """minGRU over a whole sequence: z = sigmoid(k), h~ = v (log_space: g(v)),
    h_t = (1 - z_t) h_{t-1} + z_t h~_t. k, v: (B, T, D) pre-activations from the input alone; h0 is
    h_{-1} itself (not g(h0), also with log_space).

    out: an optional preallocated h (same shape and dtype as k, not overlapping the inputs); the
    result is written there and returned. Engines that take it (numba) write it directly, the others
    copy into it. A loop that reuses its buffers skips the allocation, whose first touch of fresh
    pages can cost more than the kernel (docs/BENCHMARKS.md)."""
    xp, impl, h0, k, v = _setup(engine, h0, k=k, v=v)
    outs = checks.outputs("out", out, {"h": _like(k)}, {"k": k, "v": v, "h0": h0}, xp)
    return _call(xp, impl, "min_gru", outs, k, v, h0, checks.flag("log_space", log_space))


def min_gru_backward(k, v, h, dh, h0=None, *, log_space=False, engine=None, out=None):
    """(dk, dv, dh0) of `min_gru` given its output h and dL/dh. out: optional preallocated
    (dk, dv, dh0), as `min_gru`'s out."""
    xp, impl, h0, k, v, h, dh = _setup(engine, h0, k=k, v=v, h=h, dh=dh)
    like = {"dk": _like(k), "dv": _like(k), "dh0": _like(h0)}
    outs = checks.outputs("out", out, like, {"k": k, "v": v, "h": h, "dh": dh, "h0": h0}, xp)
    return _call(xp, impl, "min_gru_backward", outs, k, v, h, dh, h0, checks.flag("log_space", log_space))


def _like(x):
    """(shape, dtype) of an output shaped like x, for checks.outputs."""
    return tuple(x.shape), x.dtype


def _call(xp, impl, name, outs, *args):
    """impl.<name>(*args), its results written into `outs` when given (a tuple from checks.outputs)
    and returned as the result was (one array, or a tuple): directly where the engine lists `name` in
    its OUT (preallocated results), else computed and copied, so every engine accepts out=."""
    fn = getattr(impl, name)
    if outs is None:
        return fn(*args)
    if name in getattr(impl, "OUT", ()):
        fn(*args, out=outs[0] if len(outs) == 1 else outs)
        return outs[0] if len(outs) == 1 else outs
    got = fn(*args)
    return _copy_into(xp, outs, (got,) if len(outs) == 1 else got)


def _copy_into(xp, outs, got):
    for o, g in zip(outs, got, strict=True):
        xp.copyto(o, g)
    return outs[0] if len(outs) == 1 else outs


def min_gru_step(k_t, v_t, h_prev, *, log_space=False):
    """One recurrent step on (B, D) arrays: the constant-memory inference form of `min_gru`."""
    k_t, v_t, h_prev = checks.inputs(2, k_t=k_t, v_t=v_t, h_prev=h_prev).values()
    xp = checks.step_inputs(k_t=k_t, v_t=v_t, h_prev=h_prev)
    a, b = gates.min_gru_coeffs(xp, k_t, v_t, checks.flag("log_space", log_space))
    return a * h_prev + b


def min_lstm(kf, ki, v, h0=None, *, normalize=True, log_space=False, engine=None, out=None):
    """minLSTM: f = sigmoid(kf), i = sigmoid(ki); normalize: f' = f/(f+i), i' = i/(f+i);
    h_t = f'_t h_{t-1} + i'_t h~_t (without normalize: f and i as they are); h~ = v (log_space: g(v));
    h0 is h_{-1} itself (not g(h0), also with log_space). out: an optional preallocated h, as
    `min_gru`'s."""
    xp, impl, h0, kf, ki, v = _setup(engine, h0, kf=kf, ki=ki, v=v)
    outs = checks.outputs("out", out, {"h": _like(v)}, {"kf": kf, "ki": ki, "v": v, "h0": h0}, xp)
    return _call(xp, impl, "min_lstm", outs, kf, ki, v, h0, checks.flag("normalize", normalize),
                 checks.flag("log_space", log_space))


def min_lstm_backward(kf, ki, v, h, dh, h0=None, *, normalize=True, log_space=False, engine=None, out=None):
    """(dkf, dki, dv, dh0) of `min_lstm` given its output h and dL/dh. out: optional preallocated
    (dkf, dki, dv, dh0), as `min_gru`'s."""
    xp, impl, h0, kf, ki, v, h, dh = _setup(engine, h0, kf=kf, ki=ki, v=v, h=h, dh=dh)
    like = {"dkf": _like(v), "dki": _like(v), "dv": _like(v), "dh0": _like(h0)}
    ins = {"kf": kf, "ki": ki, "v": v, "h": h, "dh": dh, "h0": h0}
    outs = checks.outputs("out", out, like, ins, xp)
    return _call(xp, impl, "min_lstm_backward", outs, kf, ki, v, h, dh, h0, checks.flag("normalize", normalize),
                 checks.flag("log_space", log_space))


def min_lstm_step(kf_t, ki_t, v_t, h_prev, *, normalize=True, log_space=False):
    """One recurrent step of `min_lstm` on (B, D) arrays."""
    kf_t, ki_t, v_t, h_prev = checks.inputs(2, kf_t=kf_t, ki_t=ki_t, v_t=v_t, h_prev=h_prev).values()
    xp = checks.step_inputs(kf_t=kf_t, ki_t=ki_t, v_t=v_t, h_prev=h_prev)
    a, b = gates.min_lstm_coeffs(xp, kf_t, ki_t, v_t, checks.flag("normalize", normalize),
                                 checks.flag("log_space", log_space))
    return a * h_prev + b


def _lru_setup(engine, lam, h0, **seqs):
    """(xp, engine module, lam, h0, *seqs), as `_setup`."""
    seqs, lam = checks.inputs(3, **seqs), checks.as_input("lam", lam, 1)
    xp = checks.same_module(lam=lam, h0=h0, **seqs)
    shape, dtype = checks.sequences(tuple(checks.COMPLEX), **seqs)
    if lam.shape != (shape[2],) or lam.dtype != dtype:
        raise ValueError(f"lam: expected shape (D,) = ({shape[2]},) and dtype {dtype}, "
                         f"got shape {tuple(lam.shape)} dtype {lam.dtype}")
    name, impl = get_engine(engine, xp)
    checks.engine_dtype(name, impl, dtype, next(iter(seqs)))
    return xp, impl, lam, checks.state("h0", h0, shape, dtype, xp), *seqs.values()


def lru_scan(lam, bu, h0=None, *, engine=None, out=None):
    """LRU recurrence (Orvieto et al. 2023, eq. 1): h_t = lam * h_{t-1} + bu_t, complex, lam (D,)
    per channel (diagonal Lambda), bu (B, T, D) = gamma * (B u_t) computed by the caller.
    out: an optional preallocated h, as `min_gru`'s."""
    xp, impl, lam, h0, bu = _lru_setup(engine, lam, h0, bu=bu)
    outs = checks.outputs("out", out, {"h": _like(bu)}, {"lam": lam, "bu": bu, "h0": h0}, xp)
    return _call(xp, impl, "lru_scan", outs, lam, bu, h0)


def lru_scan_backward(lam, h, dh, h0=None, *, engine=None, out=None):
    """(dlam, dbu, dh0) of `lru_scan` with complex gradients as dL/dRe + i dL/dIm (PyTorch's
    convention): dbu_t = G_t = dh_t + conj(lam) G_{t+1}, dlam = sum_{b,t} G_t conj(h_{t-1}).
    out: optional preallocated (dlam, dbu, dh0), as `min_gru`'s."""
    xp, impl, lam, h0, h, dh = _lru_setup(engine, lam, h0, h=h, dh=dh)
    like = {"dlam": _like(lam), "dbu": _like(h), "dh0": _like(h0)}
    outs = checks.outputs("out", out, like, {"lam": lam, "h": h, "dh": dh, "h0": h0}, xp)
    return _call(xp, impl, "lru_scan_backward", outs, lam, h, dh, h0)
