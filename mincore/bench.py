"""Kernel benchmarks: time against the machine's own memory bandwidth, measured in the same run.

Effective bandwidth = minimal bytes / time. Minimal traffic per element (values read + written):
minGRU forward reads k, v and writes h (3), backward reads k, v, h, dh and writes dk, dv (6);
minLSTM 4 + 8 (kf, ki, v -> h; kf, ki, v, h, dh -> dkf, dki, dv); the plain scan 3 + 5 (a, b -> h;
a, h, dh -> da, db); the LRU 2 + 3 complex values (bu -> h; h, dh -> dbu; lam and dlam are one row).

Two yardsticks, each measured in the same run, interleaved call by call with the kernels so that a
noisy neighbour slows both:
- "copy": the fastest of several copies of one (B, T, D) array into a preallocated, already touched
  destination (a numba prange element copy, np.copyto, a chunked numba copy), counting bytes read plus
  bytes written. Rows with preallocated outputs (`out=`) are compared with it: a kernel at 100% moves
  its minimal bytes as fast as the best copy this machine runs moves bytes.
- "x.copy()": allocating copies, as many at once as the call returns (B, T, D) arrays (one for a
  forward, two for minGRU's backward, ...). The public calls without out= allocate their outputs,
  whose first touch (page faults, the OS zeroing fresh pages, finding huge pages) can cost more than
  the kernel, so they are compared with copies that allocate the same.
Each figure is the median of the repeats; min and max are printed beside it, and a run whose copy is
implausible, whose spread is wide or whose arrays fit in the cache says so.
GPU: mincore.bench_gpu (device-to-device copy and kernels timed with CUDA events).
"""

from __future__ import annotations

import functools
import os
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
QUICK_SHAPE = (16, 4096, 256)  # --quick: 64 MiB per float32 array; a cell's arrays above 500 MiB in all
QUICK_REPEATS = 3
VALUES = {"fwd": 3, "bwd": 6, "fwd+bwd": 9}  # minGRU's values moved per element (the GPU bench's cell)
CELL_VALUES = {"mingru": (3, 6), "minlstm": (4, 8), "lru": (2, 3), "scan": (3, 5)}  # (fwd, bwd)
CELLS = tuple(CELL_VALUES)
OUTPUTS = {"mingru": (1, 2), "minlstm": (1, 3), "lru": (1, 1), "scan": (1, 2)}  # (B, T, D) arrays returned
# (B, T, D) arrays alive at once per cell (inputs, outputs, an API call's results, two copies), in
# units of one real array of the dtype: the host memory a shape needs (the LRU's are complex)
ARRAYS = {"mingru": 11, "minlstm": 14, "lru": 16, "scan": 11}
SPREAD = 0.25  # (max - min) / median above this: "wide spread"
PLAUSIBLE_COPY = 1.0  # GB/s: a copy below this means the machine was busy, not memory


@functools.cache
def _numba_copies():
    """Two numba copies: an element-wise prange loop, and 1024 chunks written by the kernels' row store
    (numba_simd.store_row), plainly (the old yardstick) or non-temporally (`stream`): without the
    streamed one a kernel that streams its outputs could beat every copy and flatter itself."""
    from numba import njit, prange

    from .kernels import numba_threads  # noqa: F401 (the kernels' threading layer, chosen before any launch)
    from .kernels.numba_simd import fence, store_row

    @njit(parallel=True, nogil=True)
    def element(x, out):
        x, out = x.reshape(-1), out.reshape(-1)
        for i in prange(x.size):
            out[i] = x[i]

    @njit(parallel=True, nogil=True)
    def chunked(x, out, stream):
        x, out = x.reshape(-1), out.reshape(-1)
        n, chunks = x.size, 1024
        for c in prange(chunks):
            s, e = c * n // chunks, (c + 1) * n // chunks
            store_row(out, np.uint64(s), x[s:e], e - s, stream)  # plain stores unless `stream`
            fence()

    return element, chunked


def copies(x, dst=None):
    """The copy yardsticks on array x: name -> call, all writing into `dst` (default: an array like x,
    allocated and touched here)."""
    element, chunked = _numba_copies()
    dst = np.zeros_like(x) if dst is None else dst
    return {"copy: numba prange": lambda: element(x, dst), "copy: np.copyto": lambda: np.copyto(dst, x),
            "copy: numba chunked": lambda: chunked(x, dst, False),
            "copy: numba streamed": lambda: chunked(x, dst, True)}


def median_time(fn, repeats: int) -> float:
    """Median host-clock seconds of `repeats` calls after one warm-up (CPU work is synchronous)."""
    return statistics.median(interleaved({"f": fn}, repeats)["f"])


def interleaved(fns: dict, repeats: int) -> dict:
    """name -> host-clock seconds of each call: every function once (warm-up), then `repeats` rounds
    calling each in turn, so that a disturbance lands on all of them. A call's result is released
    after its clock stops (freeing is not the call's cost)."""
    for f in fns.values():
        f()
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            r = f()
            times[n].append(time.perf_counter() - t0)
            del r
    return times


def problem(cell, shape, dtype="float32", log_space=False):
    """(x, fwd, bwd) for one cell: x an array of the cell's element type (what the copies copy),
    fwd(engine, out) and bwd(engine, out) the public calls on fixed N(0, 1) inputs (gates in (0.5, 1)
    for the scan, |lam| < 1 for the LRU); bwd takes h from the numba forward when it can run."""
    rng = np.random.default_rng(0)
    real = np.dtype(dtype)
    ctype = np.result_type(real, np.complex64)

    def r():
        return rng.standard_normal(shape, dtype=np.float64).astype(real)

    def c():
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(ctype)

    if cell == "mingru":
        k, v, dh = r(), r(), r()
        fwd = functools.partial(cells.min_gru, k, v, log_space=log_space)
        return k, fwd, _bwd(fwd, lambda h, **kw: cells.min_gru_backward(k, v, h, dh, log_space=log_space, **kw))
    if cell == "minlstm":
        kf, ki, v, dh = r(), r(), r(), r()
        fwd = functools.partial(cells.min_lstm, kf, ki, v, log_space=log_space)
        return v, fwd, _bwd(fwd, lambda h, **kw: cells.min_lstm_backward(kf, ki, v, h, dh, log_space=log_space,
                                                                          **kw))
    if cell == "scan":
        a, b, dh = rng.uniform(0.5, 1.0, shape).astype(real), r(), r()
        fwd = functools.partial(cells.scan, a, b)
        return b, fwd, _bwd(fwd, lambda h, **kw: cells.scan_backward(a, h, dh, **kw))
    if cell == "lru":
        D = shape[2]
        lam = (rng.uniform(0.5, 0.99, D) * np.exp(1j * rng.uniform(0, np.pi, D))).astype(ctype)
        bu, dh = c(), c()
        fwd = functools.partial(cells.lru_scan, lam, bu)
        return bu, fwd, _bwd(fwd, lambda h, **kw: cells.lru_scan_backward(lam, h, dh, **kw))
    raise ValueError(f"cell: expected one of {', '.join(CELLS)}, got {cell!r}")


def _bwd(fwd, backward):
    """bwd(engine, out=None): `backward` on h = fwd() (computed once, on first use)."""
    h = []

    def bwd(engine=None, out=None):
        if not h:
            h.append(fwd(engine="numba" if "numba" in _numpy_engines() else engine))
        return backward(h[0], engine=engine, out=out)
    return bwd


@functools.cache
def _numpy_engines():
    from .backend import engines

    return [n for n, e in engines().items() if e["available"] and "numpy" in e["arrays"]]


def _takes_out(engine, fn_name) -> bool:
    """True where the engine writes `fn_name`'s results into preallocated outputs itself."""
    from .backend import get_engine

    return fn_name in getattr(get_engine(engine, np)[1], "OUT", ())


FN_NAMES = {"mingru": "min_gru", "minlstm": "min_lstm", "lru": "lru_scan", "scan": "scan"}


def bench_cell(cell, shape, engines, *, dtype="float32", repeats=REPEATS["cpu"], log_space=False, torch=True,
               pattern=False):
    """(rows, notes) for one cell and shape on NumPy arrays: each engine's public call (against the
    allocating copy), its preallocated call where the engine writes out= itself (against the fastest
    copy), and for minGRU the PyTorch baselines; notes: the yardsticks, the load and any warnings.
    pattern: also the cell's loads and stores without its arithmetic (mincore.bench_pattern), a row
    against the fastest copy like the preallocated calls, and a note of each such call against it."""
    x, fwd, bwd = problem(cell, shape, dtype, log_space)
    n_bwd = OUTPUTS[cell][1]
    fns = {**copies(x), "x.copy() fwd": x.copy, "x.copy() bwd": lambda: tuple(x.copy() for _ in range(n_bwd))}
    kinds = {}  # row name -> (yardstick, forward call, backward call, backward includes forward)
    for eng in engines:
        kinds[eng] = ("x.copy()", functools.partial(fwd, engine=eng), functools.partial(bwd, eng), False)
        if _takes_out(eng, FN_NAMES[cell]):
            h_out, g_out = _touched(fwd(engine=eng)), _touched(bwd(eng))
            kinds[eng + " (out=)"] = ("copy", functools.partial(fwd, engine=eng, out=h_out),
                                      functools.partial(bwd, eng, out=g_out), False)
    if torch and cell == "mingru":
        k, v = fwd.args
        dh = np.random.default_rng(1).standard_normal(k.shape).astype(k.dtype)
        for name, f, fb in _torch_baselines(np, k, v, dh):
            kinds[name] = ("x.copy()", f, fb, True)
    if pattern:
        from .bench_pattern import PATTERN, pattern_calls, pattern_notes

        kinds[PATTERN] = ("copy", *pattern_calls(cell, x), False)
    for name, (_, f, b, _) in kinds.items():
        fns[name + " fwd"], fns[name + " bwd"] = f, b
    load = os.getloadavg()[0]
    times = interleaved(fns, repeats)
    rows, notes = summarise(cell, shape, dtype, x.nbytes, times, kinds, load)
    return rows, notes + (pattern_notes(rows) if pattern else [])


def _touched(res):
    """Preallocated outputs like a result (array or tuple), their pages touched (as the copy's)."""
    return tuple(np.zeros_like(r) for r in res) if isinstance(res, tuple) else np.zeros_like(res)


def summarise(cell, shape, dtype, nbytes, times, kinds, load):
    """Rows and notes from the interleaved times (fwd+bwd: the sum of each round's two calls)."""
    def gbps(values, sec):
        return values * nbytes / sec / 1e9

    copy_names = [n for n in times if n.startswith("copy: ")]
    best = min(copy_names, key=lambda n: statistics.median(times[n]))
    af, ab = times["x.copy() fwd"], times["x.copy() bwd"]
    of, ob = OUTPUTS[cell]
    alloc = {"fwd": gbps(2 * of, statistics.median(af)), "bwd": gbps(2 * ob, statistics.median(ab)),
             "fwd+bwd": gbps(2 * (of + ob), statistics.median([f + b for f, b in zip(af, ab, strict=True)]))}
    copy_bw = gbps(2, statistics.median(times[best]))
    vf, vb = CELL_VALUES[cell]
    rows, wide = [], []
    for name, (stick, *_, includes_fwd) in kinds.items():
        tf, tb = times[name + " fwd"], times[name + " bwd"]
        passes = {"fwd": tf, "bwd": [b - f for f, b in zip(tf, tb, strict=True)] if includes_fwd else tb}
        passes["fwd+bwd"] = tb if includes_fwd else [f + b for f, b in zip(tf, tb, strict=True)]
        for p, ts in passes.items():
            med = statistics.median(ts)
            values = {"fwd": vf, "bwd": vb, "fwd+bwd": vf + vb}[p]
            yard = copy_bw if stick == "copy" else alloc[p]
            rows.append({"engine": name, "cell": cell, "shape": tuple(shape), "dtype": np.dtype(dtype).name,
                         "pass": p, "ms": med * 1e3, "ms min": min(ts) * 1e3, "ms max": max(ts) * 1e3,
                         "GB/s": gbps(values, med), "yardstick": stick, "copy GB/s": yard,
                         "% of copy": 100 * gbps(values, med) / yard, "load": load})
            if p != "bwd" and (max(ts) - min(ts)) > SPREAD * med:
                wide.append(f"{name} {p}")
    notes = [f"{cell} {tuple(shape)} {np.dtype(dtype).name}: copy = {best[6:]} {copy_bw:.1f} GB/s ("
             + ", ".join(f"{n[6:]} {gbps(2, statistics.median(times[n])):.1f}" for n in copy_names)
             + f"); x.copy() {alloc['fwd']:.1f} GB/s one array at a time, {alloc['bwd']:.1f} {ob} at once; "
             f"load average {load:.2f}"]
    notes += warnings((vf + vb) * nbytes, times[best], copy_bw, rows, wide)
    return rows, notes


def warnings(moved, copy_times, copy_gbps, rows, wide) -> list[str]:
    """What makes a run's ratios doubtful, one line each (moved: the bytes a forward and a backward
    read and write in all)."""
    out = []
    llc = _last_level_cache()
    if moved < llc:
        out.append(f"warning: the arrays ({moved / 2**20:.1f} MiB in all) fit in the {llc / 2**20:.0f} MiB "
                   "cache: this measures the cache, not memory; use a larger --shape")
    if copy_gbps < PLAUSIBLE_COPY or max(copy_times) - min(copy_times) > SPREAD * statistics.median(copy_times):
        out.append(f"warning: the copy ran at {copy_gbps:.1f} GB/s, {min(copy_times) * 1e3:.1f}-"
                   f"{max(copy_times) * 1e3:.1f} ms per call: the machine is busy, so every ratio is doubtful")
    fast = sorted({r["engine"] for r in rows if r["yardstick"] == "copy" and r["% of copy"] > 100})
    if fast:
        out.append(f"warning: {', '.join(fast)} faster than the copy: the yardstick is implausible "
                   "(disturbed, or in cache)")
    if wide:
        out.append(f"warning: wide run-to-run spread (max - min > {SPREAD:.0%} of the median): "
                   f"{', '.join(wide)}; take more --repeats on a quieter machine")
    return out


def _last_level_cache() -> int:
    """Bytes of the largest CPU cache (the OS's figure), else 32 MiB."""
    from .kernels.numba_simd import last_level_cache

    return last_level_cache() or 32 * 2**20


def bench_min_gru(shape, engines, *, dtype="float32", repeats=REPEATS["cpu"], log_space=False, torch=True):
    """Rows for minGRU (bench_cell's rows without the notes)."""
    return bench_cell("mingru", shape, engines, dtype=dtype, repeats=repeats, log_space=log_space, torch=torch)[0]


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
    head = "| engine | (B, T, D) | dtype | pass | ms | min-max ms | GB/s | % of yardstick | yardstick GB/s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['shape']} | {r['dtype']} | {r['pass']} | {r['ms']:.1f} | "
                     f"{r['ms min']:.1f}-{r['ms max']:.1f} | {r['GB/s']:.1f} | {r['% of copy']:.0f}% of "
                     f"{r['yardstick']} | {r['copy GB/s']:.1f} |")
    return "\n".join(lines)
