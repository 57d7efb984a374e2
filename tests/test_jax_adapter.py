"""mincore.jax against the NumPy API (the same kernels: results equal bit for bit), the float64 oracle
(engine "numpy") and, for the LRU's complex gradients, JAX's own differentiation of a lax.scan LRU;
jax.test_util.check_grads in float64 / complex128; jax.jit, jax.grad and jax.vmap (folded into B where
possible, else one kernel call per mapped index); bad input."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from tolerances import assert_close, lru_scales, min_gru_scales, min_lstm_scales, scan_scales, tolerance

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import mincore  # noqa: E402
import mincore.jax as mj  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 / complex128 arrays in JAX for this module only."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


# (operation, keyword flags): every flag combination of the four functions
VARIANTS = [("scan", {"reverse": False}), ("scan", {"reverse": True}),
            ("min_gru", {"log_space": False}), ("min_gru", {"log_space": True}),
            *[("min_lstm", {"normalize": n, "log_space": s}) for n in (True, False) for s in (False, True)],
            ("lru_scan", {})]
IDS = [op + "".join(f"-{k}" for k, v in kw.items() if v) for op, kw in VARIANTS]
NSEQ = {"scan": 2, "min_gru": 2, "min_lstm": 3, "lru_scan": 2}  # arguments before h0


def draw(op, shape, dtype, with_h0, seed=0):
    """The arguments of `op` in call order (h0 last, when given), as NumPy arrays. Gates stay in
    (0.5, 1) and v away from g's kink at 0, so finite differences see smooth functions."""
    rng = np.random.default_rng(seed)
    B, T, D = shape
    if op == "lru_scan":
        cdtype = np.complex64 if np.dtype(dtype) == np.float32 else np.complex128

        def c(*s):
            return (rng.normal(size=s) + 1j * rng.normal(size=s)).astype(cdtype)
        lam = (rng.uniform(0.5, 0.99, D) * np.exp(1j * rng.uniform(0, 2 * np.pi, D))).astype(cdtype)
        return (lam, c(B, T, D), *([c(B, D)] if with_h0 else []))
    n = {"scan": 2, "min_gru": 2, "min_lstm": 3}[op]
    seqs = [rng.normal(size=shape) for _ in range(n)]
    if op == "scan":
        seqs[0] = rng.uniform(0.5, 1.0, shape)
    seqs[-1] = np.where(np.abs(seqs[-1]) < 0.05, 0.5, seqs[-1])
    return tuple(x.astype(dtype) for x in (*seqs, *([rng.normal(size=(B, D))] if with_h0 else [])))


def numpy_backward(op, kw, args, h, dh):
    """The NumPy API's gradients in argument order (dh0 only when h0 is given)."""
    n = NSEQ[op]
    h0 = args[n] if len(args) > n else None
    if op == "scan":
        grads = mincore.scan_backward(args[0], h, dh, h0, **kw)
    elif op == "lru_scan":
        grads = mincore.lru_scan_backward(args[0], h, dh, h0, **kw)
    else:
        grads = getattr(mincore, op + "_backward")(*args[:n], h, dh, h0, **kw)
    return grads[:len(args)]


def magnitudes(op, kw, args, dh):
    """(h, grads) of the magnitude computation (tests/tolerances.py), in argument order."""
    up = [np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64) for x in args]
    n, dh = NSEQ[op], np.asarray(dh, up[0].dtype)
    seqs, h0 = up[:n], (up[n] if len(up) > n else None)
    if op == "scan" and kw["reverse"]:  # the forward scan of the time-flipped arrays
        def flip(x):
            return x[:, ::-1]
        h, (da, db, dh0) = scan_scales(flip(seqs[0]), flip(seqs[1]), h0, flip(dh))
        h, grads = flip(h), (flip(da), flip(db), dh0)
    else:
        scales = {"scan": scan_scales, "min_gru": min_gru_scales, "min_lstm": min_lstm_scales,
                  "lru_scan": lru_scales}[op]
        h, grads = scales(*seqs, h0, dh, **{k: v for k, v in kw.items() if k != "reverse"})
    return h, grads[:len(args)]


def lax_lru(lam, bu, h0=None):
    """The LRU written in JAX (lax.scan): JAX's own convention for complex gradients."""
    h0 = jnp.zeros(bu.shape[::2], bu.dtype) if h0 is None else h0

    def step(h, x):
        h = lam * h + x
        return h, h
    return jnp.swapaxes(jax.lax.scan(step, h0, jnp.swapaxes(bu, 0, 1))[1], 0, 1)


def cotangent(h, seed=1):
    rng = np.random.default_rng(seed)
    dh = rng.normal(size=h.shape)
    if np.iscomplexobj(h):
        dh = dh + 1j * rng.normal(size=h.shape)
    return dh.astype(h.dtype)


# --------------------------------------------------------------------------------------------
# values and gradients


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("T", [0, 1, 17, 1031])
@pytest.mark.parametrize("op,kw", VARIANTS, ids=IDS)
def test_against_numpy_api_and_oracle(op, kw, T, with_h0, dtype):
    args = draw(op, (2, T, 3), dtype, with_h0)
    h, vjp = jax.vjp(functools.partial(getattr(mj, op), **kw), *args)
    want = getattr(mincore, op)(*args, **kw)
    assert isinstance(h, jax.Array) and h.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(h), want)
    dh = cotangent(want)
    grads = vjp(dh)
    assert len(grads) == len(args)
    if op == "lru_scan":  # JAX's cotangents are the conjugates of mincore's (PyTorch's) gradients
        expected = [np.conj(g) for g in numpy_backward(op, kw, args, want, np.conj(dh))]
    else:
        expected = numpy_backward(op, kw, args, want, dh)
    for g, w in zip(grads, expected, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), w)

    up = [x.astype(np.complex128 if np.iscomplexobj(x) else np.float64) for x in args]
    tol = tolerance("numba", dtype)
    oracle = getattr(mincore, op)(*up, **kw, engine="numpy")
    mags = magnitudes(op, kw, args, dh)
    assert_close(h, oracle, tol, f"{op} h", scale=mags[0])
    if op == "lru_scan":
        oracle_grads = jax.vjp(lax_lru, *up)[1](dh.astype(np.complex128))
    else:
        oracle_grads = numpy_backward(op, {**kw, "engine": "numpy"}, up, oracle, dh.astype(np.float64))
    for i, (g, w) in enumerate(zip(grads, oracle_grads, strict=True)):
        assert_close(g, np.asarray(w), tol, f"{op} grad {i}", scale=mags[1][i])


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("T", [0, 1, 17, 1031])
@pytest.mark.parametrize("op,kw", VARIANTS, ids=IDS)
def test_check_grads(op, kw, T, with_h0):
    """Reverse-mode gradients against finite differences in float64 / complex128, every input."""
    args = draw(op, (2, T, 3), "float64", with_h0, seed=T)
    # eps: central differences in lam over 1031 steps (lam^t) need a step below the default 1e-4
    check_grads(functools.partial(getattr(mj, op), **kw), args, order=1, modes=["rev"], eps=1e-6)


def test_lru_gradient_convention():
    """grad of a real loss w.r.t. complex inputs is JAX's: equal to a lax.scan LRU's, and the conjugate
    of mincore's (PyTorch's) dL/dRe + i dL/dIm."""
    lam, bu, h0 = draw("lru_scan", (2, 9, 4), "float64", True)

    def loss(f):
        return lambda *a: jnp.sum(jnp.abs(f(*a)) ** 2)
    got = jax.grad(loss(mj.lru_scan), argnums=(0, 1, 2))(lam, bu, h0)
    want = jax.grad(loss(lax_lru), argnums=(0, 1, 2))(lam, bu, h0)
    h = mincore.lru_scan(lam, bu, h0)
    torch_style = mincore.lru_scan_backward(lam, h, 2 * h, h0)
    for g, w, t in zip(got, want, torch_style, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g, np.conj(t), rtol=1e-12, atol=1e-12)


def test_backward_callback_takes_only_what_the_adjoint_reads(monkeypatch):
    """Every array passed to a callback is copied by JAX: scan's and lru_scan's backward get neither
    b nor bu (their adjoints do not read them), only (a or lam, h0, h, dh)."""
    seen = []
    real = mj._batched

    def spy(kernel, ranks, specs, *args):
        seen.append(len(args))
        return real(kernel, ranks, specs, *args)
    monkeypatch.setattr(mj, "_batched", spy)
    for op in ("scan", "lru_scan"):
        args = draw(op, (3, 11, 5), "float64", True)  # a shape no other test compiles
        jax.grad(lambda *a, op=op: jnp.sum(jnp.abs(getattr(mj, op)(*a)) ** 2), (0, 1, 2))(*args)
    assert seen == [3, 4, 3, 4]


@pytest.mark.parametrize("op", ["scan", "min_gru", "min_lstm", "lru_scan"])
def test_differentiable_once_in_reverse_mode(op):
    args = draw(op, (2, 5, 3), "float64", True)

    def loss(*a):
        return jnp.sum(jnp.abs(getattr(mj, op)(*a)) ** 2)
    with pytest.raises(TypeError, match=rf"^mincore.jax.{op}: no second derivatives"):
        jax.grad(lambda *a: jnp.sum(jnp.abs(jax.grad(loss, 1)(*a))))(*args)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(loss, args, args)


# --------------------------------------------------------------------------------------------
# jit and vmap


@pytest.mark.parametrize("op,kw", VARIANTS, ids=IDS)
def test_jit(op, kw):
    args = draw(op, (2, 17, 3), "float64", True)
    fn = functools.partial(getattr(mj, op), **kw)
    np.testing.assert_array_equal(jax.jit(fn)(*args), fn(*args))

    def loss(*a):
        return jnp.sum(jnp.abs(fn(*a)) ** 2)
    argnums = tuple(range(len(args)))
    for g, w in zip(jax.jit(jax.grad(loss, argnums))(*args), jax.grad(loss, argnums)(*args), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.fixture
def calls(monkeypatch):
    """Records the batch size B of every call of the NumPy API's functions made by mincore.jax."""
    seen = []

    def spy(name, f):
        def call(*a, **kw):
            seen.append((name, a[1].shape[0]))
            return f(*a, **kw)
        return call
    for name in ("min_gru", "min_gru_backward", "lru_scan", "lru_scan_backward"):
        monkeypatch.setattr(mincore, name, spy(name, getattr(mincore, name)))
    return seen


@pytest.mark.parametrize("in_axes", [(0, 0, None), (0, None, 0), (1, 1, 1)])
def test_vmap_folds_into_batch(in_axes, calls):
    """A mapped axis becomes part of B: one kernel call on N * B rows, forward and backward."""
    N, (B, T, D) = 4, (2, 17, 3)
    k, v, h0 = draw("min_gru", (N * B, T, D), "float64", True)
    per = [x.reshape(N, B, *x.shape[1:]) for x in (k, v, h0)]
    batched = [p if a == 0 else p[0] if a is None else np.ascontiguousarray(np.moveaxis(p, 0, 1))
               for p, a in zip(per, in_axes, strict=True)]
    got = jax.vmap(mj.min_gru, in_axes)(*batched)
    assert calls == [("min_gru", N * B)]
    one = [p if a is not None else np.broadcast_to(p[:1], p.shape) for p, a in zip(per, in_axes, strict=True)]
    want = np.stack([mincore.min_gru(one[0][i], one[1][i], one[2][i]) for i in range(N)])
    np.testing.assert_array_equal(got, want)

    calls.clear()
    grads = jax.vmap(jax.grad(lambda *a: jnp.sum(mj.min_gru(*a) ** 2), (0, 1, 2)), in_axes)(*batched)
    assert calls == [("min_gru", N * B), ("min_gru_backward", N * B)]
    for i in range(N):
        h = mincore.min_gru(one[0][i], one[1][i], one[2][i])
        want = mincore.min_gru_backward(one[0][i], one[1][i], h, 2 * h, one[2][i])
        for g, w in zip(grads, want, strict=True):
            np.testing.assert_allclose(g[i], w, rtol=1e-13, atol=1e-13)


def test_vmap_lru_lam_mapped_is_sequential(calls):
    """lam differs per mapped index, so the forward runs once per index; the backward always does
    (dlam sums over B). Unmapped lam: one forward call on N * B rows."""
    N, (B, T, D) = 3, (2, 17, 4)
    lams = np.stack([draw("lru_scan", (B, T, D), "float64", False, seed=s)[0] for s in range(N)])
    bus = np.stack([draw("lru_scan", (B, T, D), "float64", False, seed=s)[1] for s in range(N)])
    got = jax.vmap(mj.lru_scan)(lams, bus)
    assert calls == [("lru_scan", B)] * N
    np.testing.assert_array_equal(got, np.stack([mincore.lru_scan(lams[i], bus[i]) for i in range(N)]))

    calls.clear()
    got = jax.vmap(mj.lru_scan, (None, 0))(lams[0], bus)
    assert calls == [("lru_scan", N * B)]
    np.testing.assert_array_equal(got, np.stack([mincore.lru_scan(lams[0], bus[i]) for i in range(N)]))

    calls.clear()

    def loss(lam, bu):
        return jnp.sum(jnp.abs(mj.lru_scan(lam, bu)) ** 2)
    grads = jax.vmap(jax.grad(loss, (0, 1)))(lams, bus)
    assert calls == [("lru_scan", B)] * N + [("lru_scan_backward", B)] * N
    reference = jax.jit(jax.grad(lambda lam, bu: jnp.sum(jnp.abs(lax_lru(lam, bu)) ** 2), (0, 1)))
    for i in range(N):
        want = reference(lams[i], bus[i])
        for g, w in zip(grads, want, strict=True):
            np.testing.assert_allclose(g[i], w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op,kw", VARIANTS, ids=IDS)
def test_grad_of_vmap_and_nested_vmap(op, kw):
    """grad through vmap (gradients of unmapped h0 / lam summed over the mapped axis) and two mapped
    axes at once, against the unbatched function applied per index."""
    M, N, (B, T, D) = 2, 3, (2, 5, 3)
    fn = functools.partial(getattr(mj, op), **kw)
    draws = [draw(op, (B, T, D), "float64", True, seed=s) for s in range(M * N)]
    stacked = [np.stack([d[i] for d in draws]).reshape(M, N, *draws[0][i].shape) for i in range(len(draws[0]))]
    got = jax.vmap(jax.vmap(fn))(*stacked)
    for j, d in enumerate(draws):
        np.testing.assert_array_equal(got[j // N, j % N], fn(*d))

    shared = stacked[-1][0, 0]  # one h0 for every index

    def total(seq_args, h0):
        hs = jax.vmap(fn, (0,) * len(seq_args) + (None,))(*seq_args, h0)
        return jnp.sum(jnp.abs(hs) ** 2)
    flat = [s.reshape(M * N, *s.shape[2:]) for s in stacked[:-1]]
    g_seqs, g_h0 = jax.grad(total, (0, 1))(flat, shared)
    want_h0 = 0
    for j, d in enumerate(draws):
        want = jax.grad(lambda *a: jnp.sum(jnp.abs(fn(*a)) ** 2), tuple(range(len(d))))(*d[:-1], shared)
        for g, w in zip(g_seqs, want[:-1], strict=True):
            np.testing.assert_allclose(g[j], w, rtol=1e-12, atol=1e-12)
        want_h0 = want_h0 + want[-1]
    np.testing.assert_allclose(g_h0, want_h0, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# bad input: the NumPy API's errors, naming the argument


def test_bad_input():
    k = jnp.zeros((2, 5, 3))
    with pytest.raises(TypeError, match=r"^k: expected a JAX or NumPy array, got list"):
        mj.min_gru([[[0.0]]], k)
    with pytest.raises(ValueError, match=r"^v: expected 3 dimensions \(B, T, D\), got shape \(2, 3\) dtype float64"):
        mj.min_gru(k, k[:, 0])
    with pytest.raises(TypeError, match=r"^kf: expected dtype float32 or float64, got int32"):
        mj.min_lstm(jnp.zeros((2, 5, 3), jnp.int32), k, k)
    with pytest.raises(TypeError, match=r"^b: dtype float32 does not match a dtype float64"):
        mj.scan(k, k.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"^v: shape \(2, 4, 3\) does not match k shape \(2, 5, 3\)"):
        mj.min_gru(k, k[:, :4])
    with pytest.raises(ValueError, match=r"^h0: expected shape \(B, D\) = \(2, 3\), got \(3, 2\)"):
        mj.min_gru(k, k, jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"^h0: dtype float32 does not match the sequences' dtype float64"):
        mj.min_gru(k, k, jnp.zeros((2, 3), jnp.float32))
    with pytest.raises(TypeError, match=r"^log_space: expected True or False, got 1"):
        mj.min_gru(k, k, log_space=1)
    with pytest.raises(TypeError, match=r"^bu: expected dtype complex64 or complex128, got float64"):
        mj.lru_scan(jnp.zeros(3), k)
    with pytest.raises(ValueError, match=r"^lam: expected shape \(D,\) = \(3,\) and dtype complex128"):
        mj.lru_scan(jnp.zeros(4, jnp.complex128), k.astype(jnp.complex128))
    with pytest.raises(TypeError, match=r"^k: masked arrays are not supported"):
        mj.min_gru(np.ma.masked_array(np.zeros((2, 5, 3))), k)


def test_numpy_inputs_in_any_layout():
    """NumPy inputs go through the NumPy API's conversion: a strided view and other byte order work."""
    k, v, h0 = draw("min_gru", (2, 9, 3), "float64", True)
    wide = np.zeros((2, 18, 3))
    wide[:, ::2] = k
    got = mj.min_gru(wide[:, ::2], v.astype(">f8"), h0)
    np.testing.assert_array_equal(got, mincore.min_gru(k, v, h0))


def test_refused_when_compiled_for_a_gpu():
    """Under jit the arrays are tracers: the check happens when XLA compiles for the platform."""
    k = jnp.zeros((2, 5, 3))
    for platform in ("cuda", "rocm"):
        with pytest.raises(ValueError, match=rf"^k: the computation is compiled for {platform}, but "
                                             r"mincore.jax runs mincore's CPU kernels only"):
            jax.jit(mj.min_gru).trace(k, k).lower(lowering_platforms=(platform,))
    with pytest.raises(ValueError, match=r"^k: the computation is compiled for cuda"):
        jax.jit(jax.grad(lambda k: mj.min_gru(k, k).sum())).trace(k).lower(lowering_platforms=("cuda",))
    assert "custom_call" in jax.jit(mj.min_gru).trace(k, k).lower(lowering_platforms=("cpu",)).as_text()


def _jax_gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


@pytest.mark.gpu
@pytest.mark.skipif(_jax_gpu() is None, reason="JAX has no GPU device here (pip install 'jax[cuda12]')")
def test_refused_on_a_gpu():
    k = jax.device_put(jnp.zeros((2, 5, 3), jnp.float32), _jax_gpu())
    with pytest.raises(ValueError, match=r"^k: got an array on .*mincore.jax runs mincore's CPU kernels"):
        mj.min_gru(k, k)
    with pytest.raises(ValueError, match=r"^k: the computation is compiled for cuda"):
        jax.jit(mj.min_gru)(k, k)


def test_interop_jax_examples_run():
    """docs/INTEROP.md's JAX section: every Python block runs as printed (x64 as the reader has it: off)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "INTEROP.md").read_text()
    section = text.split("\n## JAX\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/INTEROP.md lost its JAX example"
    jax.config.update("jax_enable_x64", False)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/INTEROP.md JAX block {i + 1}", "exec"), {"__name__": "__interop__"})
    finally:
        jax.config.update("jax_enable_x64", True)
