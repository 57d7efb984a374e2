"""GPU engines ("cupy", "numba-cuda") on a real device. Every test is marked gpu and skips cleanly
(tests/conftest.py) where no CUDA device is usable.

1. The CPU suite's engine-parametrised bodies, re-collected here with a device `backend` fixture:
   oracle comparisons (test_scan_engines), float64 finite-difference VJPs (test_backward), chunking,
   reverse and empty-sequence identities (test_identities).
2. GPU specifics: every kernel path forced (thread per channel, segments, global chunks) and the
   plan the engine picks, float16 storage on "cupy", the two engines against each other at large
   shapes, non-default streams, and arrays of the wrong module refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import mincore
from mincore import backend as mb
from mincore.kernels import reference as ref
from mincore.kernels.gpu_common import plan_override

try:  # the CPU suite's engine-parametrised bodies, collected again here with a device backend
    from conftest import make_backend
    from test_backward import test_lru_scan_vjp, test_min_gru_vjp, test_min_lstm_vjp, test_scan_vjp  # noqa: F401
    from test_identities import (  # noqa: F401
        test_chunking_carries_state,
        test_empty_sequences,
        test_reverse_is_flip_scan_flip,
        test_unit_gates_give_cumsum,
        test_zero_gates_give_b,
    )
    from test_scan_engines import (  # noqa: F401
        test_float32_long_sequence,
        test_lru_scan,
        test_min_gru,
        test_min_lstm,
        test_scan,
        test_scan_any_sign_gates,
    )
except ImportError:  # a checkout without those helpers still runs the GPU specifics below
    make_backend = None


def _unusable(engines) -> str | None:
    """None when every engine in `engines` can run on a real device here, else why not."""
    if mb.cudasim_enabled():
        return "NUMBA_ENABLE_CUDASIM=1: the simulator is not a device"
    info = mb.engines()
    bad = [f"{e}: {info[e]['reason']}" for e in engines if not info[e]["available"]]
    return "; ".join(bad) or None


GPU_ENGINES = [n for n, e in mb.engines().items() if e["arrays"] == ["cupy"]]  # device arrays only
_NONE_USABLE = all(_unusable([e]) for e in GPU_ENGINES)  # conftest skips gpu tests too; this file
pytestmark = [pytest.mark.gpu,  # also stands alone (see the ImportError fallback above)
              pytest.mark.skipif(_NONE_USABLE, reason=f"no usable CUDA device: {_unusable(GPU_ENGINES)}")]
PLANS = {"auto": {}, "thread": {"nseg": 1, "C": 1}, "segments": {"dpb": 8, "nseg": 32, "C": 1},
         "chunks": {"dpb": 32, "nseg": 8, "C": 5}}
TOL = {"float16": dict(rtol=2e-2, atol=2e-3), "float32": dict(rtol=1e-4, atol=1e-5),
       "float64": dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(scope="module", params=GPU_ENGINES)
def backend(request):
    """Overrides conftest's NumPy backend: the same test bodies on CuPy arrays."""
    return make_backend(request.param, device=True)


def _impl(engine):
    import cupy

    reason = _unusable([engine])
    if reason:
        pytest.skip(reason)
    return mb.get_engine(engine, cupy)[1]


@pytest.fixture(params=list(PLANS))
def plan(request):
    with plan_override(**PLANS[request.param]):
        yield PLANS[request.param]


def _close(got, want, dtype):
    import cupy

    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, cupy.ndarray), type(g)
        g = cupy.asnumpy(g)
        wide = np.complex128 if np.iscomplexobj(w) else np.float64
        np.testing.assert_allclose(g.astype(wide), np.asarray(w).astype(wide), **TOL[dtype])


def _oracle(fn, *args):
    """The oracle in float64 (float16 inputs widened), results cast back to the input dtype."""
    dt = next(a.dtype for a in args if isinstance(a, np.ndarray))
    wide = [a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
            if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(ref, fn)(*wide)
    return tuple(o.astype(dt) for o in out) if isinstance(out, tuple) else out.astype(dt)


def _cases(shape, dtype, seed=0):
    """(fn, host args, backward fn, index of the first array the backward adds) per cell."""
    rng = np.random.default_rng(seed)
    B, T, D = shape

    def r(*s):
        return rng.standard_normal(s).astype(dtype)

    h0, dh = r(B, D), r(B, T, D)
    yield "scan", (np.abs(np.tanh(r(B, T, D))), r(B, T, D)), h0, dh, {}
    for ls in (False, True):
        yield "min_gru", (r(B, T, D), r(B, T, D)), h0, dh, {"log_space": ls}
        for nz in (False, True):
            yield "min_lstm", (r(B, T, D), r(B, T, D), r(B, T, D)), h0, dh, {"normalize": nz, "log_space": ls}


def _run_cell(impl, fn, args, h0, dh, kw, dtype):
    import cupy

    d = [cupy.asarray(a) for a in args]
    h_ref = _oracle(fn, *args, h0, *kw.values())
    _close(getattr(impl, fn)(*d, cupy.asarray(h0), *kw.values()), h_ref, dtype)
    bargs = (args[0],) if fn == "scan" else args
    want = _oracle(f"{fn}_backward", *bargs, h_ref, dh, h0, *kw.values())
    got = getattr(impl, f"{fn}_backward")(*[cupy.asarray(a) for a in (*bargs, h_ref, dh, h0)], *kw.values())
    _close(got, want, dtype)


@pytest.mark.parametrize("engine", GPU_ENGINES)
@pytest.mark.parametrize("shape", [(4, 1000, 70), (2, 4099, 33), (300, 20, 8), (3, 1, 5)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_path_against_the_oracle(engine, plan, shape, dtype):
    impl = _impl(engine)
    for fn, args, h0, dh, kw in _cases(shape, dtype):
        _run_cell(impl, fn, args, h0, dh, kw, dtype)
    rng = np.random.default_rng(1)
    B, T, D = shape
    cdt = np.complex64 if dtype == "float32" else np.complex128
    lam = (rng.uniform(0.5, 0.999, D) * np.exp(1j * rng.uniform(0, np.pi, D))).astype(cdt)
    bu, dh, h0 = ((rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(cdt)
                  for s in ((B, T, D), (B, T, D), (B, D)))
    import cupy

    h = _oracle("lru_scan", lam, bu, h0)
    _close(impl.lru_scan(*map(cupy.asarray, (lam, bu, h0))), h, dtype)
    _close(impl.lru_scan_backward(*map(cupy.asarray, (lam, h, dh, h0))),
           _oracle("lru_scan_backward", lam, h, dh, h0), dtype)


@pytest.mark.parametrize("shape", [(4, 1000, 70), (8, 8192, 64)])
def test_float16_storage_on_cupy(plan, shape):
    impl = _impl("cupy")
    assert "float16" in impl.DTYPES
    for fn, args, h0, dh, kw in _cases(shape, np.float16):
        _run_cell(impl, fn, args, h0, dh, kw, "float16")


@pytest.mark.parametrize("shape", [(64, 512, 256), (8, 16384, 256), (512, 64, 256), (1, 100000, 32)])
def test_cupy_and_numba_cuda_agree_at_large_shapes(shape):
    import cupy

    if _unusable(GPU_ENGINES):
        pytest.skip(_unusable(GPU_ENGINES))
    rng = np.random.default_rng(7)
    k, v, dh = (cupy.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(3))
    out = {}
    for e in GPU_ENGINES:
        h = mincore.min_gru(k, v, log_space=True, engine=e)
        out[e] = (h, *mincore.min_gru_backward(k, v, h, dh, log_space=True, engine=e))
    for a, b in zip(out["cupy"], out["numba-cuda"], strict=True):
        np.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", GPU_ENGINES)
def test_runs_on_the_current_stream(engine):
    import cupy

    _impl(engine)
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((4, 3000, 64)).astype(np.float32) for _ in range(2))
    want = _oracle("min_gru", k, v, np.zeros((4, 64), np.float32), False)
    with cupy.cuda.Stream(non_blocking=True) as s:
        h = mincore.min_gru(cupy.asarray(k), cupy.asarray(v), engine=engine)
        s.synchronize()
    _close(h, want, "float32")


@pytest.mark.parametrize("engine", GPU_ENGINES)
def test_host_arrays_are_refused(engine):
    _impl(engine)
    k = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(TypeError, match="cupy.asarray"):
        mincore.min_gru(k, k, engine=engine)


def test_gpu_bench_rows():
    from mincore.bench_gpu import gpu_bench, markdown

    if _unusable(GPU_ENGINES):
        pytest.skip(_unusable(GPU_ENGINES))
    rows = gpu_bench([(4, 256, 64)], repeats=3, torch=False)
    assert {(r["engine"], r["pass"]) for r in rows} == {(e, p) for e in GPU_ENGINES
                                                       for p in ("fwd", "bwd", "fwd+bwd")}
    assert all(r["ms"] > 0 and r["copy GB/s"] > 0 for r in rows)
    assert "| cupy |" in markdown(rows)
