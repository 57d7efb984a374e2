"""Each cell's memory access pattern without its arithmetic: the ceiling of its kernels' layout.

`mincore bench kernels --pattern` times, beside each numba kernel, a kernel that reads and writes
exactly what it does (the same arrays, job layout, row directions, the backward's h one row below,
row buffers streamed out by numba_simd.store_row) but only sums its inputs. Its time is what the
loads and stores alone cost on this machine; the cell's kernel can approach it (the scan, with no
gate math, runs at 95-105% of it), so "kernel / pattern" separates what the gate math and its overlap
with memory cost from what the access pattern does (more concurrent streams than a copy's two).

The row loop reads every input at element j before the next j, as the kernels do; channels run
downwards in the backward patterns (numba_cpu's "Backward order"; the LRU backward's kernel reads
its pairs upwards, the pattern the order the hardware follows best). No prefetch: where a kernel
prefetches (the cells' forwards, the LRU backward), the pattern measures what the hardware does alone.
"""

from __future__ import annotations

import functools

import numpy as np

PATTERN = "pattern (no math)"  # the bench's row name


@functools.cache
def _kernels():
    """(forward, backward) pattern kernels: rows upwards reading `ins`; rows downwards reading `ins`
    and h one row below (h0's row at t = 0 is h's row 0), channels downwards."""
    from numba import njit, prange

    from .kernels.numba_scan import JIT, ROW, U, job_range
    from .kernels.numba_simd import fence, line_buffer, store_row

    @njit(**ROW)
    def row_up(ins, buf, o, n):
        for j in range(n):
            acc = ins[0][o + U(j)]
            for q in range(1, len(ins)):  # a constant trip count: unrolled, so the j loop vectorises
                acc += ins[q][o + U(j)]
            buf[j] = acc

    @njit(**ROW)
    def row_down(ins, h, buf, o, p, n):
        for jj in range(n):
            j = n - 1 - jj
            acc = h[p + U(j)]
            for q in range(len(ins)):
                acc += ins[q][o + U(j)]
            buf[j] = acc

    @njit(**JIT)
    def fwd(ins, outs, stream, rows, width, blk, jobs):
        for job in prange(jobs):
            i, d0, n = job_range(job, width, blk)
            buf = line_buffer(n, ins[0].dtype)
            for t in range(rows):
                o = U((i * rows + t) * width + d0)
                row_up(ins, buf, o, n)
                for q in range(len(outs)):
                    store_row(outs[q], o, buf, n, stream)
            fence()

    @njit(**JIT)
    def bwd(ins, h, outs, stream, rows, width, blk, jobs):
        for job in prange(jobs):
            i, d0, n = job_range(job, width, blk)
            buf = line_buffer(n, h.dtype)
            for t in range(rows - 1, -1, -1):
                o = U((i * rows + t) * width + d0)
                row_down(ins, h, buf, o, o - U(width) if t > 0 else o, n)
                for q in range(len(outs)):
                    store_row(outs[q], o, buf, n, stream)
            fence()

    return fwd, bwd


def run_pattern(ins, h, outs):
    """One pattern call on (B, T, W) arrays: every output row = the sum of the input rows (forward,
    h None), or of the input rows and h's row one step below (backward; row 0 reads h's row 0)."""
    from .kernels.numba_scan import block, n_jobs
    from .kernels.numba_simd import streams

    B, T, W = ins[0].shape
    blk = block(B, W)
    flat_in, flat_out = tuple(a.reshape(-1) for a in ins), tuple(a.reshape(-1) for a in outs)
    fwd, bwd = _kernels()
    if h is None:
        fwd(flat_in, flat_out, streams(*outs), T, W, blk, n_jobs(B, W, blk))
    else:
        bwd(flat_in, h.reshape(-1), flat_out, streams(*outs), T, W, blk, n_jobs(B, W, blk))


# per cell: (forward reads, backward reads other than h, backward writes); the forward writes h, and
# the backward reads h one row below (h_{t-1}); the LRU's complex arrays are taken as (Re, Im) pairs
PATTERNS = {"mingru": (2, 3, 2), "minlstm": (3, 4, 3), "scan": (2, 2, 2), "lru": (1, 1, 1)}


def pattern_arrays(cell) -> int:
    """(B, T, D) arrays pattern_calls allocates, in real arrays of the dtype (the bench's ARRAYS units)."""
    n_fwd, n_bwd, n_out = PATTERNS[cell]
    return (n_fwd + 1 + n_bwd + 1 + n_out) * (2 if cell == "lru" else 1)


def pattern_calls(cell, x):
    """(fwd, bwd): no-arithmetic stand-ins for `cell`'s forward and backward on arrays like x (B, T, D),
    each reading and writing what the cell's numba kernels read and write."""
    if x.dtype.kind == "c":  # the LRU kernels run on the real views of their complex arrays
        x = x.view(x.real.dtype)
    n_fwd, n_bwd, n_out = PATTERNS[cell]
    rng = np.random.default_rng(0)

    def arrays(n):
        return tuple(rng.standard_normal(x.shape).astype(x.dtype) for _ in range(n))

    fwd_in, bwd_in, h = arrays(n_fwd), arrays(n_bwd), arrays(1)[0]
    fwd_out, bwd_out = (np.zeros_like(x),), tuple(np.zeros_like(x) for _ in range(n_out))
    return lambda: run_pattern(fwd_in, None, fwd_out), lambda: run_pattern(bwd_in, h, bwd_out)


def pattern_notes(rows) -> list[str]:
    """One line per preallocated call among the bench's rows: its GB/s as a share of the access
    pattern's, pass by pass."""
    ceiling = {r["pass"]: r["GB/s"] for r in rows if r["engine"] == PATTERN}
    by_engine = {}
    for r in rows:
        if r["yardstick"] == "copy" and r["engine"] != PATTERN:
            by_engine.setdefault(r["engine"], []).append(f"{r['pass']} {100 * r['GB/s'] / ceiling[r['pass']]:.0f}%")
    return [f"{name} against its access pattern without the arithmetic: {', '.join(parts)}"
            for name, parts in by_engine.items()]
