"""Where the time of one training step goes: recurrent kernels, matrix products, everything else.

The model is the selective-copying one (Feng et al. 2024, sec. 4.1): vocabulary 16, 3 layers,
d_model 64, expansion 6, RMSNorm pre-norm residual blocks, dropout 0.1, AdamW with weight-decay groups,
clipping at 1.0; loss on the last 16 positions only. One step = forward + cross entropy + backward +
clip + AdamW. Timers wrap the kernel calls (mincore.cells as called by mincore.layers) and every matrix
product (mincore.autograd.ops._mm); the rest of the step is "outside kernels and matmuls". The fixed
per-step Python cost is estimated by timing the same step on a (1, 2) batch of width 1 x expansion 1.

    python benchmarks/profile_step.py [--batch 64] [--seq 256] [--cell mingru] [--steps 20] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import time
from collections import defaultdict

import numpy as np
from mincore.autograd import F, ops, optim

import mincore
from mincore import cells
from mincore.models import SequenceModel

KERNELS = ("min_gru", "min_gru_backward", "min_lstm", "min_lstm_backward", "lru_scan", "lru_scan_backward")
timers: dict[str, float] = defaultdict(float)


def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            timers[name] += time.perf_counter() - t
    return wrapper


def flush_subnormals(x):
    """Zero the subnormal entries of a float32/float64 (or complex) array in place (exponent bits 0)."""
    r = x.view(x.real.dtype)
    bits, mask = (np.int32, 0x7F800000) if r.dtype == np.float32 else (np.int64, 0x7FF0000000000000)
    np.multiply(r, (r.view(bits) & mask) != 0, out=r)
    return x


def with_ftz(fn):
    """Backward kernel + flush of its outputs (timed on its own: an in-kernel flush costs ~nothing)."""
    flush = timed("ftz", lambda out: tuple(flush_subnormals(r) for r in out))

    @functools.wraps(fn)
    def wrapper(*a, **k):
        return flush(fn(*a, **k))
    return wrapper


def instrument(ftz=False):
    for name in KERNELS:
        f = timed("kernels", getattr(cells, name))
        setattr(cells, name, with_ftz(f) if ftz and name.endswith("_backward") else f)
    ops._mm = timed("matmul", ops._mm)


def copy_batch(rng, batch, seq, vocab=16, n_data=16):
    """Selective copying (Gu & Dao 2023): data tokens 1..14 at random places among noise 15, then
    16 markers 0; targets are the data tokens in order at the marker positions (-100 elsewhere)."""
    n_data = min(n_data, seq // 2)
    x = np.full((batch, seq), vocab - 1, np.int64)
    y = np.full((batch, seq), -100, np.int64)
    data = rng.integers(1, vocab - 1, (batch, n_data))
    for b in range(batch):
        pos = np.sort(rng.choice(seq - n_data, n_data, replace=False))
        x[b, pos] = data[b]
    x[:, seq - n_data:] = 0
    y[:, seq - n_data:] = data
    return x, y


def make_step(batch, seq, d_model, expansion, cell, dropout=0.1):
    model = SequenceModel(vocab_size=16, d_model=d_model, d_output=16, n_layers=3, cell=cell,
                          expansion=expansion, norm="rms", dropout=dropout)
    opt = optim.AdamW(model.param_groups(0.05), lr=3e-4)
    rng = np.random.default_rng(0)
    x, y = copy_batch(rng, batch, seq)

    def step():
        loss = F.cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss
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
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--expansion", type=float, default=6.0)
    ap.add_argument("--cell", default="mingru", choices=["mingru", "minlstm", "lru"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cprofile", action="store_true", help="also print the top functions by own time")
    ap.add_argument("--ftz", action="store_true",
                    help="flush subnormal gradients from the backward kernels to zero in NumPy (GEMMs on "
                         "subnormal inputs run ~70x slower); the flush counts as outside-kernel time")
    args = ap.parse_args(argv)

    tiny = make_step(1, 2, 1, 1.0, args.cell, dropout=0.0)
    step = make_step(args.batch, args.seq, args.d_model, args.expansion, args.cell)
    for _ in range(3):  # compile / warm caches
        tiny()
        step()
    fixed = median_time(tiny, 5 * args.steps)
    instrument(args.ftz)
    timers.clear()
    wall = time.perf_counter()
    total = median_time(step, args.steps)
    wall = time.perf_counter() - wall
    kern, mm, ftz = (timers[k] / args.steps for k in ("kernels", "matmul", "ftz"))
    mean = wall / args.steps - ftz
    rest = mean - kern - mm
    engine = mincore.backend.resolve_engine(None, np)
    print(f"selective-copy step: cell={args.cell} batch={args.batch} seq={args.seq} d_model={args.d_model} "
          f"expansion={args.expansion} layers=3 engine={engine} ftz={args.ftz}")
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
