"""mincore.jax against the NumPy API on the same data (CPU, float32): what the callback costs.

Forward + backward of the log-space minGRU on the same (B, T, D) k, v and cotangent dh, medians of
--runs runs, taken in turn so that the machine's load falls on each alike:
  NumPy API           h = mincore.min_gru(k, v, log_space=True); mincore.min_gru_backward(k, v, h, dh, ...)
  mincore.jax, vjp    jax.jit of jax.vjp(min_gru, k, v)[1](dh): the same work as the NumPy API call
  mincore.jax, grad   jax.jit(jax.grad(sum(min_gru(k, v) * dh), (0, 1))): a loss in XLA around it
  JAX log-space scan  (--jax-scan) Heinsen's scan written in JAX (cumsum, lax.cumlogsumexp), jax.grad
Each JAX function is compiled (and numba's kernels loaded) in a warm-up call before the timed runs.
Also timed: one (B, T, D) array into a jax.pure_callback that hands it straight back, the callback's
own cost per array (JAX copies each input into a new CPU array and each result into XLA's buffer); the
minGRU forward + backward passes k, v (twice), h and dh in and h, dk and dv out.

    python benchmarks/jax_adapter.py [--shape 64 4096 256] [--runs 7] [--jax-scan] [--ref-runs 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from interleaved import medians, table  # benchmarks/interleaved.py (run as a script)

import mincore
import mincore.jax as mj


def log_g(x):
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def jax_log_space_min_gru(k, v):
    """minGRU in log space as JAX code (Heinsen 2023): h = exp(a* + logcumsumexp(log b - a*))."""
    log_a, log_b = -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(v)
    a_star = jnp.cumsum(log_a, axis=1)
    return jnp.exp(a_star + jax.lax.cumlogsumexp(log_b - a_star, axis=1))


def cases(shape, jax_scan: bool, seed=0):
    """name -> a function running forward + backward once, all on the same k, v, dh."""
    rng = np.random.default_rng(seed)
    k, v, dh = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    jk, jv, jdh = (jax.device_put(x, jax.devices("cpu")[0]) for x in (k, v, dh))
    gru = functools.partial(mj.min_gru, log_space=True)

    def numpy_api():
        h = mincore.min_gru(k, v, log_space=True)
        mincore.min_gru_backward(k, v, h, dh, log_space=True)

    vjp = jax.jit(lambda k, v, dh: jax.vjp(gru, k, v)[1](dh))
    grad = jax.jit(jax.grad(lambda k, v, dh: jnp.sum(gru(k, v) * dh), (0, 1)))
    scan = jax.jit(jax.grad(lambda k, v, dh: jnp.sum(jax_log_space_min_gru(k, v) * dh), (0, 1)))
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    echo = jax.jit(lambda x: jax.pure_callback(np.asarray, spec, x))
    out = {"mincore.min_gru (NumPy API)": numpy_api,
           "mincore.jax.min_gru, jax.vjp": lambda: jax.block_until_ready(vjp(jk, jv, jdh)),
           "mincore.jax.min_gru, jax.grad": lambda: jax.block_until_ready(grad(jk, jv, jdh))}
    out["one array through pure_callback"] = lambda: jax.block_until_ready(echo(jk))
    if jax_scan:
        out["JAX log-space scan, jax.grad"] = lambda: jax.block_until_ready(scan(jk, jv, jdh))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 4096, 256], metavar=("B", "T", "D"))
    ap.add_argument("--runs", type=int, default=7, help="timed runs of the mincore cases")
    ap.add_argument("--jax-scan", action="store_true", help="also time a log-space scan written in JAX")
    ap.add_argument("--ref-runs", type=int, default=3, help="timed runs of the JAX scan (slow)")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, mincore {mincore.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    shape = tuple(args.shape)
    res = medians(cases(shape, args.jax_scan), args.runs, args.ref_runs, slow="JAX log-space")
    table(f"minGRU log-space forward + backward, {shape} float32", res, "mincore.min_gru (NumPy API)")


if __name__ == "__main__":
    main()
