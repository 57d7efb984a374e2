"""mincore.torch's functions: the custom ops against the NumPy API (bit for bit: the same kernels on
the same memory) and the float64 oracle, gradcheck, strided inputs, zero-copy, opcheck,
torch.compile, bad input, CUDA tensors. Skipped where torch is not installed (CI installs it); CUDA
tests skip without a device. The modules: tests/test_torch_modules.py."""

from __future__ import annotations

import re

import numpy as np
import pytest

import mincore

torch = pytest.importorskip("torch")
import mincore.torch as mt  # noqa: E402  (after the skip: it imports torch)

# function -> (its inputs before h0, the inputs its backward takes, the flag combinations)
CELLS = {
    "scan": (("a", "b"), ("a",), [{"reverse": False}, {"reverse": True}]),
    "min_gru": (("k", "v"), ("k", "v"), [{"log_space": False}, {"log_space": True}]),
    "min_lstm": (("kf", "ki", "v"), ("kf", "ki", "v"),
                 [{"normalize": n, "log_space": s} for n in (True, False) for s in (False, True)]),
    "lru_scan": (("lam", "bu"), ("lam",), [{}]),
}
CASES = [pytest.param(name, flags, id=f"{name}-{'-'.join(k for k, v in flags.items() if v) or 'plain'}")
         for name, (_, _, combos) in CELLS.items() for flags in combos]
TS = [0, 1, 17, 1031]


def make_inputs(name, B, T, D, dtype, rng, with_h0=True):
    """NumPy inputs of `name` (dtype real; complex of that precision for lru_scan) and h0 (or None)."""
    names = CELLS[name][0]
    cdt = np.result_type(dtype, np.complex64)
    if name == "lru_scan":
        lam = rng.uniform(0.5, 0.99, D) * np.exp(1j * rng.uniform(0, 2 * np.pi, D))
        arrays = {"lam": lam.astype(cdt), "bu": (rng.standard_normal((B, T, D, 2)) @ [1, 1j]).astype(cdt)}
        h0 = (rng.standard_normal((B, D, 2)) @ [1, 1j]).astype(cdt)
    else:
        arrays = {n: rng.standard_normal((B, T, D)).astype(dtype) for n in names}
        if name == "scan":
            arrays["a"] = rng.uniform(0.5, 1.0, (B, T, D)).astype(dtype)
        h0 = rng.standard_normal((B, D)).astype(dtype)
    return arrays, (h0 if with_h0 else None)


def leaf(a):
    """A contiguous tensor with a's values, requiring grad, sharing nothing with a (torch.tensor keeps
    NumPy's strides of an empty array, some 0, which gradcheck refuses)."""
    return torch.empty(a.shape, dtype=torch.from_numpy(a).dtype).copy_(torch.from_numpy(a)).requires_grad_()


def leaves(arrays, h0):
    """leaf() of every array and of h0 (None stays None)."""
    return {n: leaf(a) for n, a in arrays.items()}, None if h0 is None else leaf(h0)


def rel_err(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300)) if want.size else 0.0


# ------------------------------------------------------------------------------ functions
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,flags", CASES)
def test_matches_array_api_and_oracle(name, flags, dtype, with_h0, T):
    """Forward and autograd gradients equal the NumPy API's forward and backward exactly, and agree
    with the float64 oracle (engine "numpy")."""
    rng = np.random.default_rng(T)
    arrays, h0 = make_inputs(name, 2, T, 8, dtype, rng, with_h0)
    ts, th0 = leaves(arrays, h0)
    h = getattr(mt, name)(*ts.values(), th0, **flags)
    want = getattr(mincore, name)(*arrays.values(), h0, **flags)
    np.testing.assert_array_equal(h.detach().numpy(), want)
    assert h.dtype == ts[CELLS[name][0][-1]].dtype and h.shape == want.shape

    dh = rng.standard_normal(want.shape).astype(want.dtype)
    h.backward(torch.from_numpy(dh))
    kept = [arrays[n] for n in CELLS[name][1]]
    *grads, dh0 = getattr(mincore, name + "_backward")(*kept, want, dh, h0, **flags)
    for n, g in zip(CELLS[name][0], grads, strict=True):
        np.testing.assert_array_equal(ts[n].grad.numpy(), g, err_msg=n)
    if with_h0:
        np.testing.assert_array_equal(th0.grad.numpy(), dh0)

    wide = {n: a.astype(np.result_type(a.dtype, np.float64)) for n, a in arrays.items()}
    h0w = None if h0 is None else h0.astype(np.result_type(h0.dtype, np.float64))
    oracle = getattr(mincore, name)(*wide.values(), h0w, engine="numpy", **flags)
    assert rel_err(want, oracle) < (1e-10 if dtype == "float64" else 1e-5)
    if dtype == "float64":  # float32 gradients vs the oracle: the engine suite's scaled tolerances
        keptw = [wide[n] for n in CELLS[name][1]]
        *gw, dh0w = getattr(mincore, name + "_backward")(*keptw, oracle, dh, h0w, engine="numpy", **flags)
        for n, g in zip(CELLS[name][0], gw, strict=True):
            assert rel_err(ts[n].grad.numpy(), g) < 1e-10, n
        if with_h0:
            assert rel_err(th0.grad.numpy(), dh0w) < 1e-10


@pytest.mark.parametrize("name,flags", CASES)
def test_engine_passes_through(name, flags):
    """engine= reaches the array API in the forward and the backward: engine "numpy" (the oracle)
    gives its results bit for bit."""
    arrays, h0 = make_inputs(name, 2, 9, 4, "float64", np.random.default_rng(5))
    ts, th0 = leaves(arrays, h0)
    h = getattr(mt, name)(*ts.values(), th0, engine="numpy", **flags)
    want = getattr(mincore, name)(*arrays.values(), h0, engine="numpy", **flags)
    np.testing.assert_array_equal(h.detach().numpy(), want)
    h.backward(torch.ones_like(h))
    kept = [arrays[n] for n in CELLS[name][1]]
    *grads, dh0 = getattr(mincore, name + "_backward")(*kept, want, np.ones_like(want), h0, engine="numpy", **flags)
    for n, g in zip(CELLS[name][0], grads, strict=True):
        np.testing.assert_array_equal(ts[n].grad.numpy(), g, err_msg=n)
    np.testing.assert_array_equal(th0.grad.numpy(), dh0)


def test_no_second_derivatives():
    """The backward operator has no autograd formula: differentiating it raises, never a wrong zero."""
    k, v = (torch.randn(2, 5, 3, requires_grad=True) for _ in range(2))
    (dk,) = torch.autograd.grad(mt.min_gru(k, v).sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        dk.sum().backward()


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("name,flags", CASES)
def test_gradcheck(name, flags, with_h0, T):
    """torch.autograd.gradcheck in float64 (complex128 for lru_scan: Wirtinger derivatives) in every
    tensor input, h0 and lam included; random projections (fast_mode) at T = 1031."""
    arrays, h0 = make_inputs(name, 2, T, 3, "float64", np.random.default_rng(T + 1), with_h0)
    ts, th0 = leaves(arrays, h0)
    fn = getattr(mt, name)
    inputs = (*ts.values(), th0) if with_h0 else tuple(ts.values())
    assert torch.autograd.gradcheck(lambda *xs: fn(*xs, **flags), inputs, fast_mode=T > 100)


def _layout(t):
    """A non-contiguous copy of t."""
    if t.ndim == 1:
        return torch.stack([t, torch.zeros_like(t)], -1)[:, 0]
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


def strided(t):
    """t's values in a non-contiguous tensor; complex ones also lazily conjugated (conjugate bit)."""
    t = t.detach()
    return _layout(t.conj().resolve_conj()).conj() if t.is_complex() else _layout(t)


@pytest.mark.parametrize("name,flags", CASES)
def test_strided_inputs(name, flags):
    """Transposed layouts, every-other-element views and conjugate-bit tensors give the results and
    gradients of contiguous ones."""
    arrays, h0 = make_inputs(name, 3, 17, 5, "float64", np.random.default_rng(3))
    ts, th0 = leaves(arrays, h0)
    views = {n: strided(t.detach()).requires_grad_() for n, t in ts.items()}
    vh0 = strided(th0.detach()).requires_grad_()
    assert not any(v.is_contiguous() for v in (*views.values(), vh0))
    assert all(v.is_conj() for v in (*views.values(), vh0) if v.is_complex())
    fn = getattr(mt, name)
    h, hv = fn(*ts.values(), th0, **flags), fn(*views.values(), vh0, **flags)
    torch.testing.assert_close(hv, h, rtol=0, atol=0)
    dh = torch.randn_like(h)
    h.backward(dh)
    hv.backward(dh.transpose(0, 1).contiguous().transpose(0, 1))  # a strided gradient too
    for n in ts:
        torch.testing.assert_close(views[n].grad, ts[n].grad, rtol=0, atol=0)
    torch.testing.assert_close(vh0.grad, th0.grad, rtol=0, atol=0)


def test_zero_copy(monkeypatch):
    """Contiguous tensors reach the kernels as views of their memory, and the kernels' outputs come
    back as tensors over the same memory (forward and backward); a strided input is copied."""
    seen = {}

    def spy(fname):
        real = getattr(mincore, fname)

        def wrapped(*args, **kw):
            out = real(*args, **kw)
            seen[fname] = (args, out)
            return out
        monkeypatch.setattr(mincore, fname, wrapped)

    spy("min_gru")
    spy("min_gru_backward")
    k, v = (torch.randn(2, 9, 4, requires_grad=True) for _ in range(2))
    h = mt.min_gru(k, v)
    (k_arr, v_arr, _), h_arr = seen["min_gru"]
    assert k_arr.ctypes.data == k.data_ptr() and v_arr.ctypes.data == v.data_ptr()
    assert h.data_ptr() == h_arr.ctypes.data
    dh = torch.randn_like(h)
    h.backward(dh)
    (_, _, h_saved, dh_arr, _), (dk, dv, _) = seen["min_gru_backward"]
    assert h_saved.ctypes.data == h.data_ptr() and dh_arr.ctypes.data == dh.data_ptr()
    assert k.grad.data_ptr() == dk.ctypes.data and v.grad.data_ptr() == dv.ctypes.data
    ks = torch.randn(2, 4, 9).transpose(1, 2)
    mt.min_gru(ks, v.detach())
    assert not seen["min_gru"][0][0].flags.c_contiguous  # the array API makes its one copy


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("with_h0", [False, True])
def test_opcheck(name, with_h0):
    """torch.library.opcheck: schema, fake tensors (shapes and dtypes under torch.compile), autograd
    registration and AOT dispatch of the forward and backward ops."""
    arrays, h0 = make_inputs(name, 2, 5, 3, "float64", np.random.default_rng(0), with_h0)
    flags = tuple(CELLS[name][2][-1].values())
    ts, th0 = leaves(arrays, h0)
    torch.library.opcheck(getattr(torch.ops.mincore, name).default, (*ts.values(), th0, *flags, None))
    h = getattr(mincore, name)(*arrays.values(), h0, **CELLS[name][2][-1])
    kept = [torch.from_numpy(arrays[n]) for n in CELLS[name][1]]
    args = (*kept, torch.from_numpy(h), torch.ones_like(torch.from_numpy(h)),
            None if h0 is None else torch.from_numpy(h0), *flags, None)
    torch.library.opcheck(getattr(torch.ops.mincore, name + "_backward").default, args)


def test_compile_every_function():
    """Every op (and the LRU's complex views) traced into one graph (backend aot_eager: the same
    tracing, fake tensors and AOT autograd as inductor, without code generation)."""
    rng = np.random.default_rng(1)
    ins = {n: leaves(*make_inputs(n, 2, 6, 4, "float64", rng)) for n in CELLS}
    lru = mt.LRU(4, 1.0, dtype=torch.float64)
    x = torch.randn(2, 6, 4, dtype=torch.float64)

    def f():
        total = sum(getattr(mt, n)(*ts.values(), h0, **CELLS[n][2][-1]).abs().sum() for n, (ts, h0) in ins.items())
        return total + lru(x)[0].sum()

    eager, compiled = f(), torch.compile(f, fullgraph=True, backend="aot_eager")()
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=0)
    params = [t for ts, h0 in ins.values() for t in (*ts.values(), h0)]
    for g, cg in zip(torch.autograd.grad(eager, params), torch.autograd.grad(compiled, params), strict=True):
        torch.testing.assert_close(cg, g, rtol=1e-12, atol=0)

# ------------------------------------------------------------------------------ bad input
def _raises_like(fn, np_fn):
    """fn raises the exception type and message that np_fn (the NumPy API call) raises."""
    with pytest.raises((TypeError, ValueError)) as want:
        np_fn()
    with pytest.raises(want.type, match=re.escape(str(want.value))):
        fn()


def test_bad_input_same_errors_as_the_array_api():
    k, v, h0 = np.zeros((2, 5, 3), np.float32), np.zeros((2, 5, 3), np.float32), np.zeros((2, 3), np.float32)
    t = torch.from_numpy
    cases = [  # (torch call, NumPy call)
        (lambda: mt.min_gru(t(k).int(), t(v)), lambda: mincore.min_gru(k.astype(np.int32), v)),
        (lambda: mt.min_gru(t(k), t(v).double()), lambda: mincore.min_gru(k, v.astype(np.float64))),
        (lambda: mt.min_gru(t(k)[0], t(v)[0]), lambda: mincore.min_gru(k[0], v[0])),
        (lambda: mt.min_gru(t(k), t(v)[:, :4]), lambda: mincore.min_gru(k, v[:, :4])),
        (lambda: mt.min_gru(t(k), t(v), t(h0)[:1]), lambda: mincore.min_gru(k, v, h0[:1])),
        (lambda: mt.min_gru(t(k), t(v), t(h0).double()), lambda: mincore.min_gru(k, v, h0.astype(np.float64))),
        (lambda: mt.min_gru(t(k), t(v), log_space=1), lambda: mincore.min_gru(k, v, log_space=1)),
        (lambda: mt.min_lstm(t(k), t(k), t(v), normalize="yes"), lambda: mincore.min_lstm(k, k, v, normalize="yes")),
        (lambda: mt.scan(t(k).half(), t(v).half()), lambda: mincore.scan(k.astype(np.float16), v.astype(np.float16))),
        (lambda: mt.lru_scan(t(h0[0]).to(torch.complex64), t(v)),
         lambda: mincore.lru_scan(h0[0].astype(np.complex64), v)),
        (lambda: mt.lru_scan(t(h0[0]).to(torch.complex128), t(v).to(torch.complex64)),
         lambda: mincore.lru_scan(h0[0].astype(np.complex128), v.astype(np.complex64))),
        (lambda: mt.lru_scan(t(h0[0][:2]).to(torch.complex64), t(v).to(torch.complex64)),
         lambda: mincore.lru_scan(h0[0][:2].astype(np.complex64), v.astype(np.complex64))),
        (lambda: mt.min_gru(t(k), t(v), engine="nope"), lambda: mincore.min_gru(k, v, engine="nope")),
    ]
    for i, (fn, np_fn) in enumerate(cases):
        try:
            _raises_like(fn, np_fn)
        except BaseException as e:
            raise AssertionError(f"case {i}") from e


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_bad_input_torch_specific():
    k = torch.zeros(2, 5, 3)
    with pytest.raises(TypeError, match=r"v: expected a torch.Tensor, got ndarray"):
        mt.min_gru(k, np.zeros((2, 5, 3), np.float32))
    with pytest.raises(TypeError, match=r"v: on device meta, but k is on cpu; move them to one device"):
        mt.min_gru(k, torch.zeros(2, 5, 3, device="meta"))
    with pytest.raises(TypeError, match=r"h0: on device meta, but kf is on cpu"):
        mt.min_lstm(k, k, k, torch.zeros(2, 3, device="meta"))
    with pytest.raises(TypeError, match=r"k: dtype torch.bfloat16 is not supported .* k.float\(\)"):
        mt.min_gru(k.bfloat16(), k.bfloat16())
    with pytest.raises(TypeError, match=r"b: dtype torch.complex32 is not supported"):
        mt.scan(k, k.to(torch.complex32))

# ------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA device (CPU build or no GPU)")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("name,flags", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_matches_cupy(name, flags, dtype):
    """CUDA tensors run the CuPy engine: forward and gradients equal the CuPy API on the same data,
    on a side stream, with no host synchronisation from torch."""
    import cupy

    arrays, h0 = make_inputs(name, 2, 300, 16, dtype, np.random.default_rng(0))
    ts = {n: torch.tensor(a, device="cuda", requires_grad=True) for n, a in arrays.items()}
    th0 = torch.tensor(h0, device="cuda", requires_grad=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            h = getattr(mt, name)(*ts.values(), th0, **flags)
            dh = torch.ones_like(h)
            h.backward(dh)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    ca = {n: cupy.asarray(a) for n, a in arrays.items()}
    want = getattr(mincore, name)(*ca.values(), cupy.asarray(h0), **flags)
    np.testing.assert_array_equal(h.detach().cpu().numpy(), cupy.asnumpy(want))
    kept = [ca[n] for n in CELLS[name][1]]
    *grads, dh0 = getattr(mincore, name + "_backward")(*kept, want, cupy.ones_like(want), cupy.asarray(h0), **flags)
    for n, g in zip(CELLS[name][0], grads, strict=True):
        np.testing.assert_array_equal(ts[n].grad.cpu().numpy(), cupy.asnumpy(g), err_msg=n)
    np.testing.assert_array_equal(th0.grad.cpu().numpy(), cupy.asnumpy(dh0))


@pytest.mark.gpu
@cuda
def test_cuda_float16_and_mixed_devices():
    k = torch.randn(2, 64, 8, device="cuda", dtype=torch.float16, requires_grad=True)
    v = torch.randn(2, 64, 8, device="cuda", dtype=torch.float16, requires_grad=True)
    h = mt.min_gru(k, v, log_space=True)
    h.sum().backward()
    assert h.dtype == torch.float16 and k.grad.dtype == torch.float16
    want = mt.min_gru(k.detach().float(), v.detach().float(), log_space=True)
    torch.testing.assert_close(h.float(), want, rtol=2e-2, atol=2e-2)
    with pytest.raises(TypeError, match=r"v: on device cpu, but k is on cuda:0"):
        mt.min_gru(k, v.detach().cpu())
    m = mt.MinGRU(8, 2.0).cuda()
    y, h_last = m(torch.randn(2, 16, 8, device="cuda"))
    assert y.device.type == "cuda" and h_last.shape == (2, 16)
