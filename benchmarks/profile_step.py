"""Where the time of one training step goes: recurrent kernels, matrix products, everything else.

The step is the one `mincore train --task copy` runs: the selective-copying task (mincore.tasks.copy)
at a preset with some fields replaced; one step = forward + cross entropy on the marker positions +
backward + clipping + AdamW. Kernel time is taken at the engine interface (the calls mincore.cells
makes into the engine's implementation module, see mincore.backend), matrix products with
mincore.autograd.ops.matmul_timer (every ops.mm); the rest of the step is "outside kernels and
matmuls". The fixed per-step Python cost is estimated by timing the same step on a (1, 2) batch of
width 1 x expansion 1. CPU engines (host clock).

    python benchmarks/profile_step.py [--preset default] [--batch 64] [--seq 256] [--cell mingru]
                                      [--steps 20] [--ftz] [--cprofile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import math
import pstats
import time

import numpy as np

from mincore.autograd import ops, optim
from mincore.backend import get_engine
from mincore.tasks import copy as copy_task

KERNELS = ("scan", "scan_backward", "min_gru", "min_gru_backward", "min_lstm", "min_lstm_backward", "lru_scan",
           "lru_scan_backward")


def flush_subnormals(x):
    """Zero the subnormal entries of a float32/float64 (or complex) array in place (exponent bits 0)."""
    r = x.view(x.real.dtype)
    bits, mask = (np.int32, 0x7F800000) if r.dtype == np.float32 else (np.int64, 0x7FF0000000000000)
    np.multiply(r, (r.view(bits) & mask) != 0, out=r)
    return x


@contextlib.contextmanager
def kernel_timer(impl, ftz=False):
    """Time every call into the engine module `impl` inside the block; yields {"kernels": s, "ftz": s}.
    ftz: flush subnormals from the backward kernels' outputs, timed apart (an in-kernel flush costs
    ~nothing, so the figures leave it out)."""
    tally = {"kernels": 0.0, "ftz": 0.0}
    saved = {name: getattr(impl, name) for name in KERNELS}

    def timed(name, fn):
        def call(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            t1 = time.perf_counter()
            tally["kernels"] += t1 - t0
            if ftz and name.endswith("_backward"):
                out = tuple(flush_subnormals(r) for r in out)
                tally["ftz"] += time.perf_counter() - t1
            return out
        return call

    for name, fn in saved.items():
        setattr(impl, name, timed(name, fn))
    try:
        yield tally
    finally:
        for name, fn in saved.items():
            setattr(impl, name, fn)


def make_step(cfg):
    """One optimizer step of the copy task `cfg`, as the training loop (mincore.tasks.loop) runs it."""
    task = copy_task.CopyTask(cfg)
    opt = optim.AdamW(task.param_groups(), lr=cfg.lr, betas=tuple(cfg.betas))
    rng = np.random.default_rng((cfg.seed, 1))

    def step():
        opt.zero_grad()
        loss, _ = task.loss(task.batch(rng, cfg.batch_size))
        loss.backward()
        optim.clip_grad_norm(task.model.parameters(), cfg.clip if cfg.clip > 0 else math.inf)
        opt.step()
    return step


def median_time(step, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", choices=sorted(copy_task.PRESETS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--expansion", type=float, default=6.0)
    ap.add_argument("--cell", default="mingru", choices=copy_task.MODELS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cprofile", action="store_true", help="also print the top functions by own time")
    ap.add_argument("--ftz", action="store_true",
                    help="flush subnormal gradients from the backward kernels to zero in NumPy (GEMMs on "
                         "subnormal inputs run ~70x slower); the flush is left out of every figure")
    args = ap.parse_args(argv)

    base = copy_task.PRESETS[args.preset]
    cfg = dataclasses.replace(base, batch_size=args.batch, micro_batch=None, seq_len=args.seq,
                              d_model=args.d_model, expansion=args.expansion, model=args.cell)
    tiny = make_step(dataclasses.replace(cfg, batch_size=1, seq_len=2, n_data=1, d_model=1, expansion=1.0,
                                         dropout=0.0))
    step = make_step(cfg)
    for _ in range(3):  # compile / warm caches
        tiny()
        step()
    fixed = median_time(tiny, 5 * args.steps)
    engine, impl = get_engine(cfg.engine, np)
    with kernel_timer(impl, args.ftz) as kt, ops.matmul_timer() as mt:
        wall = time.perf_counter()
        total = median_time(step, args.steps)
        wall = time.perf_counter() - wall
    kern, mm, ftz = kt["kernels"] / args.steps, mt.seconds / args.steps, kt["ftz"] / args.steps
    mean = wall / args.steps - ftz
    rest = mean - kern - mm
    print(f"selective-copy step ({args.preset} preset): cell={cfg.model} batch={cfg.batch_size} seq={cfg.seq_len} "
          f"d_model={cfg.d_model} expansion={cfg.expansion} layers={cfg.n_layers} engine={engine} ftz={args.ftz}")
    if args.ftz:
        print(f"  (NumPy subnormal flush {1e3 * ftz:.2f} ms per step left out of every figure below)")
    print(f"  step time          median {1e3 * (total - ftz):8.2f} ms   mean {1e3 * mean:8.2f} ms")
    print(f"  recurrent kernels         {1e3 * kern:8.2f} ms   {100 * kern / mean:5.1f} %")
    print(f"  matrix products           {1e3 * mm:8.2f} ms   {100 * mm / mean:5.1f} %")
    print(f"  outside kernels+matmuls   {1e3 * rest:8.2f} ms   {100 * rest / mean:5.1f} %")
    print(f"    of which fixed per-step Python (tiny-shape step) {1e3 * fixed:6.2f} ms   "
          f"{100 * fixed / mean:5.1f} %")
    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            step()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
