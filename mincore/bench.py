"""Kernel benchmarks: time against the machine's own memory bandwidth, measured in the same run.

Effective bandwidth = minimal bytes / time. Minimal bytes for min_gru on (B, T, D): forward reads
k, v and writes h (3 values per element), backward reads k, v, h, dh and writes dk, dv (6), so
forward+backward moves 9 values per element. "copy" is a parallel read+write of a buffer as large as
one (B, T, D) array, counting bytes read plus bytes written; a kernel at 100% moves its minimal
bytes as fast as a copy moves bytes. Times are medians; copy and kernels are interleaved so that a
noisy neighbour affects both.

CPU copy: a numba prange copy (the same threads and store instructions as the kernels) into a
preallocated destination. A public-API call allocates its outputs, and on this machine class the
first touch of fresh pages runs at ~1 GB/s (page faults in a VM), which dominates large shapes; so
the numba engine is also timed with preallocated outputs ("numba (out=)"): the kernel alone, on the
same footing as the copy.
GPU: mincore.bench_gpu (device-to-device copy and kernels timed with CUDA events).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from . import cells

# the defaults of `mincore bench kernels`, here once: shapes and timed runs per figure on each side
# (GPU shapes: short and long sequences, a large batch of short ones, and a long sequence with too
# few channels to fill the device, which the chunked scan exists for)
SHAPES_CPU = ((64, 512, 256), (64, 4096, 256), (8, 65536, 64))
SHAPES_GPU = ((64, 512, 256), (64, 4096, 256), (8, 65536, 256), (512, 64, 256))
SHAPES = {"cpu": SHAPES_CPU, "gpu": SHAPES_GPU}
REPEATS = {"cpu": 5, "gpu": 20}  # host-clock medians / CUDA-event medians
QUICK_SHAPE = (8, 256, 64)  # --quick: a smoke run
VALUES = {"fwd": 3, "bwd": 6, "fwd+bwd": 9}  # values moved per element, the minimal traffic


def _cpu_copy():
    from numba import njit, prange

    from .kernels import numba_threads  # noqa: F401 (the kernels' threading layer, chosen before any launch)

    @njit(parallel=True, nogil=True)
    def copy(x, out):
        x, out = x.reshape(-1), out.reshape(-1)  # any C-contiguous shape (slicing below is 1-D)
        n = x.size
        chunks = 1024
        for c in prange(chunks):
            s, e = c * n // chunks, (c + 1) * n // chunks
            xs, os_ = x[s:e], out[s:e]
            for i in range(xs.size):
                os_[i] = xs[i]

    return copy


def median_time(fn, repeats: int) -> float:
    """Median host-clock seconds of `repeats` calls after one warm-up (CPU work is synchronous)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_min_gru(shape, engines, *, dtype="float32", repeats=REPEATS["cpu"], log_space=False, torch=True):
    """Rows of {engine, shape, pass, ms, GB/s, % of copy} for min_gru on NumPy arrays of `shape`
    (GPU engines: mincore.bench_gpu, timed with CUDA events)."""
    rng = np.random.default_rng(0)
    k, v, dh = (rng.standard_normal(shape, dtype=np.float64).astype(dtype) for _ in range(3))
    n_bytes = k.nbytes
    copy = _cpu_copy()
    src, dst = k.reshape(-1), np.empty_like(k).reshape(-1)

    def do_copy():
        copy(src, dst)

    copies = []
    rows = []

    def record(name, fwd, bwd, bwd_includes_fwd=False):
        copies.append(median_time(do_copy, repeats))
        t = {"fwd": median_time(fwd, repeats), "bwd": median_time(bwd, repeats)}
        if bwd_includes_fwd:  # eager torch cannot run a backward without its forward
            t["fwd+bwd"], t["bwd"] = t["bwd"], t["bwd"] - t["fwd"]
        else:
            t["fwd+bwd"] = t["fwd"] + t["bwd"]
        copies.append(median_time(do_copy, repeats))
        for p, sec in t.items():
            rows.append({"engine": name, "shape": tuple(shape), "dtype": np.dtype(dtype).name, "pass": p,
                         "ms": sec * 1e3, "GB/s": VALUES[p] * n_bytes / sec / 1e9})

    for eng in engines:
        h = cells.min_gru(k, v, log_space=log_space, engine=eng)
        record(eng, lambda e=eng: cells.min_gru(k, v, log_space=log_space, engine=e),
               lambda e=eng, h=h: cells.min_gru_backward(k, v, h, dh, log_space=log_space, engine=e))
        if eng == "numba":  # outputs preallocated (public out=), as the copy's destination is
            record(eng + " (out=)", *_preallocated(eng, k, v, h, dh, log_space))
        del h
    if torch:
        for name, fwd, bwd in _torch_baselines(np, k, v, dh):
            record(name, fwd, bwd, bwd_includes_fwd=True)
    copy_bw = 2 * n_bytes / statistics.median(copies) / 1e9
    for r in rows:
        r["copy GB/s"] = copy_bw
        r["% of copy"] = 100 * r["GB/s"] / copy_bw
    return rows


def _preallocated(engine, k, v, h, dh, log_space):
    """(fwd, bwd) public-API calls writing into preallocated outputs (`out=`)."""
    hb, grads = np.empty_like(k), (np.empty_like(k), np.empty_like(k), np.empty_like(k[:, 0]))
    return (lambda: cells.min_gru(k, v, log_space=log_space, engine=engine, out=hb),
            lambda: cells.min_gru_backward(k, v, h, dh, log_space=log_space, engine=engine, out=grads))


def _torch_baselines(xp, k, v, dh):
    """The paper's PyTorch log-space minGRU (appendix B listing) on the same k, v, and nn.GRU with
    hidden size D on input v (its input projection is part of its work; minGRU's is not counted)."""
    try:
        import torch
    except ImportError:
        return []
    dev = "cpu" if xp is np else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        return []
    F = torch.nn.functional
    tk, tv, tdh = (torch.as_tensor(a, device=dev) for a in (k, v, dh))

    def log_g(x):
        return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))

    def minGRU_log(kk, vv):  # Feng et al. 2024, appendix B (h0 = 0: log h0 = -inf, dropped)
        log_coeffs, log_values = -F.softplus(kk), -F.softplus(-kk) + log_g(vv)
        a_star = torch.cumsum(log_coeffs, dim=1)
        return torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=1))

    kg, vg = tk.clone().requires_grad_(), tv.clone().requires_grad_()
    out = {}

    def log_fwd():
        with torch.no_grad():
            minGRU_log(tk, tv)

    def log_bwd():
        out["h"] = minGRU_log(kg, vg)
        out["h"].backward(tdh)

    rows = [("torch-logspace", log_fwd, log_bwd)]
    B, T, D = k.shape
    if T * B <= 64 * 4096:  # nn.GRU is sequential: skip the shapes where it takes minutes
        gru = torch.nn.GRU(D, D, batch_first=True).to(device=dev, dtype=tk.dtype)

        def gru_fwd():
            with torch.no_grad():
                gru(tv)

        def gru_bwd():
            y, _ = gru(vg)
            y.backward(tdh)

        rows.append(("torch-nn.GRU", gru_fwd, gru_bwd))
    return rows


def format_rows(rows) -> str:
    head = "| engine | (B, T, D) | dtype | pass | ms | GB/s | % of copy | copy GB/s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['shape']} | {r['dtype']} | {r['pass']} | {r['ms']:.1f} | "
                     f"{r['GB/s']:.1f} | {r['% of copy']:.0f}% | {r['copy GB/s']:.1f} |")
    return "\n".join(lines)
