"""The numba-cuda kernels under numba's CUDA simulator, against the oracle (engine "numpy").

Not collected by the main suite (the file name does not start with test_): NUMBA_ENABLE_CUDASIM
must be set before numba is first imported, so tests/test_cudasim.py runs this file in its own
`python -m pytest` process. Run it by hand with

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cudasim_suite.py -q

The simulator runs every GPU thread as a Python thread (~0.5 s per call here), so shapes are tiny:
8 channels x 128 steps, plus odd sizes and T in {0, 1}. Every function is checked forward and
backward on the three kernel paths: thread per channel (the simulator's default plan), segments
within a block (the on-chip chunked scan), and global chunks (totals, carry, apply); and the widest
blocks the plan rule allows.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # pragma: no cover - guarded by test_cudasim.py
    pytest.skip("run with NUMBA_ENABLE_CUDASIM=1 (tests/test_cudasim.py does)", allow_module_level=True)

from numba import config  # noqa: E402
from strategies import lru_inputs  # noqa: E402

from mincore.kernels import numba_cuda as nc  # noqa: E402
from mincore.kernels import reference as ref  # noqa: E402
from mincore.kernels.gpu_common import plan_override  # noqa: E402

PLANS = {"thread": {}, "segments": {"dpb": 4, "nseg": 8}, "chunks": {"dpb": 4, "nseg": 8, "C": 2}}
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def setup_module():
    assert config.ENABLE_CUDASIM, "numba did not start in simulator mode"


@pytest.fixture(params=list(PLANS))
def plan(request):
    with plan_override(**PLANS[request.param]):
        yield request.param


def _inputs(shape, dtype, seed=0, n=5):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(dtype) for _ in range(n)]
    return xs, rng.standard_normal((shape[0], shape[2])).astype(dtype)


def _close(got, want, dtype):
    got, want = np.atleast_1d(got), np.atleast_1d(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype)
    np.testing.assert_allclose(got, want, **TOL[dtype])


def _check(fwd, bwd, args, h0, dh, kw, dtype):
    h = getattr(nc, fwd)(*args, h0, **kw)
    h_ref = getattr(ref, fwd)(*args, h0, **kw)
    _close(h, h_ref, dtype)
    if fwd == "scan":
        got, want = nc.scan_backward(args[0], h_ref, dh, h0), ref.scan_backward(args[0], h_ref, dh, h0)
    else:
        got = getattr(nc, bwd)(*args, h_ref, dh, h0, **kw)
        want = getattr(ref, bwd)(*args, h_ref, dh, h0, **kw)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        _close(g, w, dtype)


SHAPES = [(2, 128, 4), (1, 17, 3), (3, 1, 5), (2, 0, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_min_gru(plan, shape, dtype):
    if plan == "chunks" and dtype == np.float32 and shape[1] > 100:
        shape = (1, 40, 3)  # float32 on the chunked path: a smaller shape keeps the run short
    (k, v, dh, _, _), h0 = _inputs(shape, dtype)
    for log_space in ((False, True) if shape[1] > 100 else (True,)):
        _check("min_gru", "min_gru_backward", (k, v), h0, dh, {"log_space": log_space}, dtype)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("normalize,log_space", [(True, False), (False, True), (True, True)])
def test_min_lstm(plan, shape, normalize, log_space):
    dtype = np.float64 if plan != "thread" else np.float32
    (kf, ki, v, dh, _), h0 = _inputs(shape, dtype, seed=1)
    kw = {"normalize": normalize, "log_space": log_space}
    _check("min_lstm", "min_lstm_backward", (kf, ki, v), h0, dh, kw, dtype)


@pytest.mark.parametrize("shape", [(2, 128, 4), (1, 17, 3), (2, 0, 4)])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan(plan, shape, reverse):
    dtype = np.float64
    (b, dh, u, _, _), h0 = _inputs(shape, dtype, seed=2)
    a = np.abs(np.tanh(u))  # gates in [0, 1)
    if reverse:  # no backward for reverse at the engine level (cells.scan_backward flips time)
        _close(nc.scan(a, b, h0, True), ref.scan(a, b, h0, True), dtype)
        return
    _check("scan", None, (a, b), h0, dh, {}, dtype)


@pytest.mark.parametrize("shape", [(2, 128, 4), (1, 17, 3), (2, 0, 4)])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_lru(plan, shape, dtype):
    lam, bu, dh, h0, real = lru_inputs(shape, dtype)
    h_ref = ref.lru_scan(lam, bu, h0)
    _close(nc.lru_scan(lam, bu, h0), h_ref, real)
    got, want = nc.lru_scan_backward(lam, h_ref, dh, h0), ref.lru_scan_backward(lam, h_ref, dh, h0)
    for g, w in zip(got, want, strict=True):
        _close(g, w, real)


def test_identities():
    """a = 1 gives a cumulative sum, a = 0 gives b, on the segmented path."""
    with plan_override(**PLANS["segments"]):
        (b,), h0 = _inputs((2, 128, 4), np.float64, seed=4, n=1)
        _close(nc.scan(np.ones_like(b), b, h0), h0[:, None] + np.cumsum(b, axis=1), np.float64)
        _close(nc.scan(np.zeros_like(b), b, h0), b, np.float64)


@pytest.mark.parametrize("forced", [{"dpb": 64, "nseg": 4}, {"dpb": 8, "nseg": 32}])
def test_the_plans_of_the_cuda_c_engine(forced):
    """Blocks as wide as the CUDA C engine's (64 channels x 4 segments) and 32 segments of complex128:
    dynamic shared memory sized by the plan, so both engines take the same plans."""
    with plan_override(**forced):
        (k, v, dh, _, _), h0 = _inputs((1, 40, forced["dpb"] + 6), np.float32, seed=7)  # a partial block
        _check("min_gru", "min_gru_backward", (k, v), h0, dh, {"log_space": True}, np.float32)
        lam, bu, dh, h0, real = lru_inputs((1, 9, 8), np.complex128)
        _close(nc.lru_scan(lam, bu, h0), ref.lru_scan(lam, bu, h0), real)


def test_a_plan_outside_the_rule_is_refused():
    (k, v, _, _, _), h0 = _inputs((1, 8, 4), np.float64)
    with plan_override(nseg=64), pytest.raises(ValueError, match="unusable launch plan"):
        nc.min_gru(k, v, h0, False)


def test_public_api_under_the_simulator():
    """mincore.* with engine="numba-cuda" takes NumPy arrays when the simulator is on, and returns
    NumPy arrays; mincore.engines() reports the engine as available."""
    import mincore

    assert mincore.engines()["numba-cuda"]["available"]
    (k, v, dh), h0 = _inputs((2, 33, 4), np.float64, seed=6, n=3)
    h = mincore.min_gru(k, v, h0, log_space=True, engine="numba-cuda")
    assert isinstance(h, np.ndarray)
    _close(h, ref.min_gru(k, v, h0, True), np.float64)
    got = mincore.min_gru_backward(k, v, h, dh, h0, log_space=True, engine="numba-cuda")
    for g, w in zip(got, ref.min_gru_backward(k, v, h, dh, h0, True), strict=True):
        _close(g, w, np.float64)
