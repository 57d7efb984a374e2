"""out= (preallocated results) on every cell function and every engine: the same values as without
it, written into and returned as the given arrays; the numba engine writes them directly (no output
allocated inside the call); the GPU engines accept it too (numba-cuda under the CUDA simulator).
Bad out= arguments: tests/test_errors.py. min_gru's: tests/test_scan_engines.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import mincore


def _inputs(rng, shape, dtype):
    """Arrays for every cell function: gates in (0.1, 0.9) and |lam| < 1 (the logspace engine needs
    a > 0 and lam != 0), h = the forward's output is not needed to be exact for a backward."""
    B, T, D = shape
    ctype = np.result_type(dtype, np.complex64)

    def real(lo=-2.0, hi=2.0, s=shape):
        return rng.uniform(lo, hi, s).astype(dtype)

    def cplx(s=shape):
        return (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(ctype)

    lam = (rng.uniform(0.2, 0.9, D) * np.exp(1j * rng.uniform(0, 3, D))).astype(ctype)
    return {"a": real(0.1, 0.9), "x": real(), "y": real(), "z": real(), "h0": real(s=(B, D)),
            "lam": lam, "c": cplx(), "dc": cplx(), "c0": cplx((B, D))}


def calls(i):
    """name -> (function, args, keyword flags) covering every cell function with out=."""
    a, x, y, z, h0 = i["a"], i["x"], i["y"], i["z"], i["h0"]
    lam, c, dc, c0 = i["lam"], i["c"], i["dc"], i["c0"]
    return {
        "scan": (mincore.scan, (a, x, h0), {}),
        "scan reverse": (mincore.scan, (a, x, h0), {"reverse": True}),
        "scan_backward": (mincore.scan_backward, (a, x, y, h0), {}),
        "scan_backward reverse": (mincore.scan_backward, (a, x, y, h0), {"reverse": True}),
        "min_gru": (mincore.min_gru, (x, y, h0), {}),
        "min_gru_backward": (mincore.min_gru_backward, (x, y, z, a, h0), {"log_space": True}),
        "min_lstm": (mincore.min_lstm, (x, y, z, h0), {}),
        "min_lstm log_space": (mincore.min_lstm, (x, y, z, h0), {"normalize": False, "log_space": True}),
        "min_lstm_backward": (mincore.min_lstm_backward, (x, y, z, a, a[::-1].copy(), h0), {}),
        "min_lstm_backward plain": (mincore.min_lstm_backward, (x, y, z, a, a[::-1].copy(), h0),
                                    {"normalize": False}),
        "lru_scan": (mincore.lru_scan, (lam, c, c0), {}),
        "lru_scan_backward": (mincore.lru_scan_backward, (lam, c, dc, c0), {}),
    }


def _nan_like(got):
    """Output arrays shaped like a result (one array or a tuple), filled with NaN."""
    if isinstance(got, tuple):
        return tuple(np.full_like(g, np.nan) for g in got)
    return np.full_like(got, np.nan)


@pytest.mark.parametrize("name", list(calls(_inputs(np.random.default_rng(0), (1, 1, 1), "float64"))))
def test_out_is_written_and_returned(backend, name):
    dtype = backend.dtypes[0]
    arrays = _inputs(np.random.default_rng(3), (3, 37, 20), dtype)
    fn, args, kw = calls({n: backend.to_device(x) for n, x in arrays.items()})[name]
    want = fn(*args, engine=backend.engine, **kw)
    host = tuple(backend.to_host(w) for w in want) if isinstance(want, tuple) else backend.to_host(want)
    out = _nan_like(want)
    got = fn(*args, engine=backend.engine, out=out, **kw)
    assert got is out if not isinstance(out, tuple) else all(g is o for g, o in zip(got, out, strict=True))
    for g, w in zip(got if isinstance(got, tuple) else (got,), host if isinstance(host, tuple) else (host,),
                    strict=True):
        np.testing.assert_array_equal(backend.to_host(g), w)


@pytest.mark.parametrize("name", ["scan", "scan_backward", "min_gru", "min_gru_backward", "min_lstm",
                                  "min_lstm_backward", "lru_scan", "lru_scan_backward"])
def test_numba_writes_into_out_without_allocating_results(name):
    """With out= the numba engine allocates no result (at most small per-job scratch), so a loop
    that reuses its buffers touches no fresh pages: the call's peak traced memory stays far below
    one output array (1 MB here)."""
    arrays = _inputs(np.random.default_rng(4), (4, 256, 256), "float32")
    fn, args, kw = calls(arrays)[name]
    out = _nan_like(fn(*args, engine="numba", **kw))
    fn(*args, engine="numba", out=out, **kw)  # compiled, warm
    tracemalloc.start()
    try:
        fn(*args, engine="numba", out=out, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < arrays["x"].nbytes // 8, f"{name}: {peak} bytes allocated with out="


SIM_SCRIPT = r"""
import numpy as np, mincore, sys
sys.path.insert(0, "tests")
from test_out import _inputs, calls, _nan_like
arrays = _inputs(np.random.default_rng(5), (2, 9, 4), "float64")
for name, (fn, args, kw) in calls(arrays).items():
    want = fn(*args, engine="numba-cuda", **kw)
    out = _nan_like(want)
    got = fn(*args, engine="numba-cuda", out=out, **kw)
    pairs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
    assert (got is out) if not isinstance(out, tuple) else all(g is o for g, o in zip(got, out))
    for g, w in pairs:
        np.testing.assert_array_equal(g, w)
print("ok", len(calls(arrays)))
"""


@pytest.mark.cudasim
def test_gpu_engine_accepts_out_under_the_simulator():
    """numba-cuda (NumPy arrays under the CUDA simulator) takes out= on every cell function, as the
    cupy engine does through the same path in mincore.cells (results copied into out)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "MINCORE_ENGINE": ""}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", SIM_SCRIPT], capture_output=True, text=True, env=env, cwd=root,
                       timeout=600)
    assert r.returncode == 0 and "ok 12" in r.stdout, r.stdout + r.stderr
