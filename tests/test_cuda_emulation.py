"""The CUDA C kernels of the "cupy" engine, run on the CPU through tests/cuda_emulation.py, against
the oracle: every function forward and backward, float16 / float32 / float64 (complex for the LRU),
on each kernel path (thread per channel, segments within a block, global chunks) and on the plans the
engine picks by itself for a 132-SM device. Skips only where no C++20 compiler is on PATH.
"""

from __future__ import annotations

import cuda_emulation as ce
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import lru_inputs

from mincore.kernels import cupy_engine, gpu_common
from mincore.kernels import reference as ref

pytestmark = pytest.mark.skipif(ce.CXX is None, reason="no C++ compiler (g++/clang++) on PATH")

PLANS = {"thread": {}, "segments": {"dpb": 4, "nseg": 8}, "wide": {"dpb": 32, "nseg": 8},
         "chunks": {"dpb": 8, "nseg": 4, "C": 3}, "pairs": {"dpb": 16, "nseg": 2}}
SHAPES = [(2, 128, 4), (3, 17, 5), (2, 1, 3), (2, 0, 4), (1, 70, 40)]
# (plan, shape) pairs: every shape on the cheap paths; the 256-thread "wide" blocks (slow to emulate:
# a std::thread per GPU thread) only where they matter: a partial block of channels (D = 40)
CASES = [(p, s) for p in PLANS for s in SHAPES if p != "wide" or s[2] == 40]
TOL = {np.float16: dict(rtol=2e-2, atol=2e-3), np.float32: dict(rtol=1e-4, atol=1e-5),
       np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return ce.build(tmp_path_factory.getbasetemp().parent / "cuda-emulation")


@pytest.fixture
def api(plan, emu):
    with gpu_common.plan_override(**PLANS[plan]):
        yield ce.engine(emu)


def _ref(fn, args, dtype):
    """The oracle in float32 for float16 inputs (the kernels accumulate in float32), cast back."""
    if dtype != np.float16:
        return getattr(ref, fn)(*args)
    out = getattr(ref, fn)(*[a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args])
    return tuple(o.astype(np.float16) for o in out) if isinstance(out, tuple) else out.astype(np.float16)


def _close(got, want, dtype):
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        wide = np.complex128 if np.iscomplexobj(w) else np.float64  # compare float16 in float64
        np.testing.assert_allclose(g.astype(wide), w.astype(wide), **TOL[dtype])


def _data(shape, dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)], \
        rng.standard_normal((shape[0], shape[2])).astype(dtype)


@pytest.mark.parametrize("plan,shape", CASES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_min_gru(api, shape, dtype):
    (k, v, dh), h0 = _data(shape, dtype, 3)
    for log_space in (False, True):
        h = _ref("min_gru", (k, v, h0, log_space), dtype)
        _close(api["min_gru"](k, v, h0, log_space), h, dtype)
        _close(api["min_gru_backward"](k, v, h, dh, h0, log_space),
               _ref("min_gru_backward", (k, v, h, dh, h0, log_space), dtype), dtype)


@pytest.mark.parametrize("plan,shape", CASES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_min_lstm(api, shape, dtype):
    (kf, ki, v, dh), h0 = _data(shape, dtype, 4, seed=1)
    for normalize, log_space in ((True, False), (False, True), (True, True), (False, False)):
        h = _ref("min_lstm", (kf, ki, v, h0, normalize, log_space), dtype)
        _close(api["min_lstm"](kf, ki, v, h0, normalize, log_space), h, dtype)
        _close(api["min_lstm_backward"](kf, ki, v, h, dh, h0, normalize, log_space),
               _ref("min_lstm_backward", (kf, ki, v, h, dh, h0, normalize, log_space), dtype), dtype)


@pytest.mark.parametrize("plan,shape", CASES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_scan(api, shape, dtype):
    (u, b, dh), h0 = _data(shape, dtype, 3, seed=2)
    a = np.abs(np.tanh(u))
    for reverse in (False, True):
        _close(api["scan"](a, b, h0, reverse), _ref("scan", (a, b, h0, reverse), dtype), dtype)
    h = _ref("scan", (a, b, h0), dtype)
    _close(api["scan_backward"](a, h, dh, h0), _ref("scan_backward", (a, h, dh, h0), dtype), dtype)


@pytest.mark.parametrize("plan,shape", CASES)
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_lru(api, shape, dtype):
    lam, bu, dh, h0, real = lru_inputs(shape, dtype)
    h = ref.lru_scan(lam, bu, h0)
    _close(api["lru_scan"](lam, bu, h0), h, real)
    _close(api["lru_scan_backward"](lam, h, dh, h0), ref.lru_scan_backward(lam, h, dh, h0), real)


@pytest.mark.parametrize("shape", [(8, 512, 16), (1, 4096, 8), (4, 64, 33)])
def test_engine_chosen_plans(emu, shape):
    """The plans the engine picks on a 132-SM device (segments of 32, global chunks) at small scale."""
    (k, v, dh), h0 = _data(shape, np.float32, 3, seed=5)
    api = ce.engine(emu, n_sm=132)
    h = ref.min_gru(k, v, h0, False)
    _close(api["min_gru"](k, v, h0, False), h, np.float32)
    _close(api["min_gru_backward"](k, v, h, dh, h0, False),
           ref.min_gru_backward(k, v, h, dh, h0, False), np.float32)


@pytest.mark.parametrize("shape, fwd, bwd", [
    ((512, 64, 256), (128, 1, 16), (128, 1, 8)),
    ((64, 512, 256), (64, 4, 16), (64, 4, 8)),
    ((64, 4096, 256), (64, 4, 16), (64, 4, 8)),
    ((8, 65536, 256), (8, 32, 8), (16, 16, 8)),
])
def test_plan_for_the_benchmark_shapes_on_an_h100(shape, fwd, bwd):
    """The plans the rule in gpu_common's docstring gives (tuned by the H100 sweep in BENCHMARKS.md)."""
    for cell, want in (("GruFwd", fwd), ("GruBwd", bwd)):
        p = gpu_common.cell_plan(cell, shape, np.float32, 132)
        assert (p.dpb, p.nseg, p.N, p.C) == (*want, 1), (cell, p)


@given(B=st.integers(1, 4096), T=st.integers(0, 1 << 20), D=st.integers(1, 4096),
       n_sm=st.sampled_from([0, 1, 8, 132, 1024]), cell=st.sampled_from(list(gpu_common.CELLS)),
       dtype=st.sampled_from(["float16", "float32", "float64", "complex64", "complex128"]))
def test_every_chosen_plan_obeys_the_launch_rule(B, T, D, n_sm, cell, dtype):
    p = gpu_common.cell_plan(cell, (B, T, D), dtype, n_sm)
    gpu_common.check_plan(p)
    assert p.C == 1 or (p.C - 1) * p.L < T <= p.C * p.L  # every chunk holds steps
    assert p.shared_bytes(np.dtype(dtype).itemsize) <= 48 * 1024


@pytest.mark.parametrize("forced", [{"dpb": 64, "nseg": 8}, {"dpb": 4, "nseg": 3}, {"dpb": 4, "nseg": 2},
                                    {"dpb": 8, "nseg": 64}])
def test_a_forced_plan_outside_the_rule_is_refused(emu, forced):
    (k, v), h0 = _data((2, 64, 8), np.float32, 2)
    with gpu_common.plan_override(**forced), pytest.raises(ValueError, match="unusable launch plan"):
        ce.engine(emu)["min_gru"](k, v, h0, False)


def test_plan_override_checks_its_fields_and_restores_the_outer_plan():
    with pytest.raises(TypeError, match="unknown field 'N'"), gpu_common.plan_override(N=4):
        pass
    with pytest.raises(ValueError, match="nseg must be a positive int, got 0"), gpu_common.plan_override(nseg=0):
        pass
    def fields():
        p = gpu_common.cell_plan("GruFwd", (1, 4096, 8), "float32", 0)
        return p.dpb, p.nseg, p.C

    with gpu_common.plan_override(dpb=8, nseg=4):
        with gpu_common.plan_override(C=2):
            assert fields() == (8, 4, 2)
        assert fields() == (8, 4, 1)
    assert fields() == (8, 1, 1)


def test_launch_refuses_a_cell_call_with_the_wrong_arrays(emu):
    (k, y), h0 = _data((1, 4, 2), np.float32, 2)
    target = cupy_engine.target(np, 0, lambda cell, dt, n: ())
    with pytest.raises(ValueError, match="GruFwd reads 2 arrays and writes 1, got 1 and 1"):
        gpu_common.launch(target, "GruFwd", (k,), (y,), h0, h0)
