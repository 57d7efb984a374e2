"""The numba-cuda kernels on saturated gates, under numba's CUDA simulator, against the float64 oracle.

A script, not a pytest module: NUMBA_ENABLE_CUDASIM must be set before numba is imported, so
tests/test_saturation.py runs it in its own process (`NUMBA_ENABLE_CUDASIM=1 python
tests/cudasim_saturation.py` by hand). The simulator runs every GPU thread as a Python thread, so the
cases are fixed draws of strategies.saturated's kind on a tiny shape (3 channels x 17 steps).
"""

from __future__ import annotations

import os
import sys

import numpy as np

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=1 (tests/test_saturation.py does)")

import strategies as S  # noqa: E402
import tolerances as tl  # noqa: E402

from mincore.kernels import numba_cuda as nc  # noqa: E402
from mincore.kernels import reference as ref  # noqa: E402


def saturated(rng, shape):
    big = rng.choice(np.asarray(S.EDGES + (1e4, 2.5e3)), size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return np.where(rng.uniform(size=shape) < 0.5, big, rng.normal(0, 3, size=shape))


def close(got, want, dtype, what):
    tl.assert_close(got, want, tl.tolerance("numba-cuda", dtype), what)


def main():
    n = 0
    for seed, dtype in enumerate([np.float32, np.float64, np.float32]):
        rng = np.random.default_rng(seed)
        shape = (1, 17, 3)
        k, kf, ki = (saturated(rng, shape) for _ in range(3))
        v, dh = rng.normal(0, 1.5, shape), rng.normal(0, 1.5, shape)
        h0 = rng.normal(0, 1.5, (1, 3))
        cases = [("min_gru", (k, v), {"log_space": ls}) for ls in (False, True)]
        cases += [("min_lstm", (kf, ki, v), {"normalize": nm, "log_space": ls})
                  for nm, ls in ((True, False), (False, True), (True, True))]
        for fn, xs, kw in cases:
            lo = [x.astype(dtype) for x in xs]
            h = getattr(nc, fn)(*lo, h0.astype(dtype), **kw)
            want = getattr(ref, fn)(*[x.astype(np.float64) for x in lo], h0.astype(dtype).astype(np.float64), **kw)
            close(h, want, dtype, f"{fn} {kw} {dtype.__name__}")
            got = getattr(nc, fn + "_backward")(*lo, h, dh.astype(dtype), h0.astype(dtype), **kw)
            wants = getattr(ref, fn + "_backward")(*[x.astype(np.float64) for x in lo], want,
                                                   dh.astype(dtype).astype(np.float64),
                                                   h0.astype(dtype).astype(np.float64), **kw)
            for i, (g, w) in enumerate(zip(got, wants, strict=True)):
                close(g, w, dtype, f"{fn}_backward[{i}] {kw} {dtype.__name__}")
            n += 1
    print(f"{n} saturated cases passed")


if __name__ == "__main__":
    main()
