"""What the two GPU engines ("cupy", "numba-cuda") share: the cells, the launch plan (block shape and
chunking, chosen by shape), the one rule a plan obeys, the launch sequence, and the engine-interface
functions. An engine only supplies a `Target`: its array module, its multiprocessor count and its
compiled kernels behind one calling convention.

Both engines run the same algorithm (see scan_kernels.cu): a block of dpb channels x nseg time
segments walks T in tiles of nseg*N steps; each tile is scanned as chunk totals -> carry scan over
the segments -> apply, so inputs are read once. With C > 1 global chunks the work is split further
across blocks along T (totals pass, carry pass, apply pass; inputs read twice).

Plan rule (`plan`), with `want` = threads the device holds (1024 per SM, register-limited to about
that by 48-80 registers a thread), tuned on an H100 (docs/BENCHMARKS.md has the sweep):
  - nseg = 1 (thread per channel, the plain recurrence, no barriers) when B*D > want/4, otherwise
    doubled while B*D*nseg stays <= want/2 and the tile (nseg*N steps) fits in T/2, up to 32
    segments forward and 16 backward (at (8, 65536, 256) the backward ran 1.61 ms with 16 segments
    of 16 channels against 2.02 ms with 32 of 8, the forward 0.80-0.86 ms against 1.16-1.21);
  - N (steps per thread) is the cell's most (16 forward, 8 backward for 4-byte values), except 8
    for a forward with 32 segments (0.86 ms against 1.03 ms at (8, 65536, 256));
  - dpb = min(128, next power of two >= D) when nseg = 1, else 256 // nseg: 256-thread blocks with the
    widest rows a warp can load (64 channels x 4 segments beat 32 x 8 at (64, 4096, 256): 1.05 ms
    against 1.09 ms forward+backward); dpb*nseg is a multiple of 32 (lane groups of nseg scan the
    segment totals with shuffles);
  - C > 1 only when even that leaves fewer than want/8 threads (B*D below ~500 channels on an H100)
    and T is long: C = the power of two bringing threads to want/2, each chunk >= 8 tiles long.
  The benchmark shapes on an H100 (132 SMs), forward / backward: (512, 64, 256) -> nseg 1, dpb 128;
  (64, 512, 256) and (64, 4096, 256) -> nseg 4, dpb 64; (8, 65536, 256) -> nseg 32, dpb 8, N 8 /
  nseg 16, dpb 16 (single pass, no global chunks).
A plan forced with `plan_override` (tests, plan sweeps) must obey the same limits (`check_plan`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Cell:
    """One kernel cell of scan_common.cu (and its numba twin): what it reads and writes."""

    name: str
    inputs: int  # x0.. in the cell's order (see the engine interface in mincore.backend)
    outputs: int  # y0.. of shape (B, T, D)
    backward: bool  # runs in reverse from the saved h; needs more registers (N, plan)
    partials: bool = False  # writes per-thread partial sums (B, C, nseg, D): the LRU's dlam


CELLS = {c.name: c for c in (
    Cell("ScanFwd", 2, 1, False), Cell("ScanBwd", 3, 2, True),
    Cell("GruFwd", 2, 1, False), Cell("GruBwd", 4, 2, True),
    Cell("LstmFwd", 3, 1, False), Cell("LstmBwd", 5, 3, True),
    Cell("LruFwd", 2, 1, False), Cell("LruBwd", 3, 1, True, partials=True),
)}
LOG_SPACE, NORMALIZE = 1, 2
MODE_FULL, MODE_TOTALS, MODE_APPLY = 0, 1, 2
ACC = {np.dtype(np.float16): np.dtype(np.float32)}  # accumulation dtype when it differs from storage
MAX_THREADS = 256  # per block: __launch_bounds__(256) in scan_kernels.cu
MAX_SEGMENTS = 32  # lane groups of nseg within a warp
PLAN_FIELDS = ("dpb", "nseg", "C")  # what plan_override may force


def acc_dtype(dtype) -> np.dtype:
    return ACC.get(np.dtype(dtype), np.dtype(dtype))


def steps_per_thread(acc, cell: str) -> int:
    """N: register-resident steps per thread per tile, i.e. loads in flight per input (the most a cell
    takes; `plan` may pick fewer). Forward cells keep 2 values a step (64 registers at N = 16) and
    backward cells 3-5 (64-80 registers at N = 8); 8/16-byte values get 4."""
    if np.dtype(acc).itemsize != 4:
        return 4
    return 8 if CELLS[cell].backward else 16


def steps_options(acc, cell: str) -> tuple[int, ...]:
    """Every N `plan` can pick for a cell (each engine compiles one kernel instance each)."""
    n = steps_per_thread(acc, cell)
    return (n, 8) if n > 8 else (n,)


@dataclass(frozen=True)
class Plan:
    dpb: int  # channels per block (blockDim.x)
    nseg: int  # time segments per block (blockDim.y)
    C: int  # global chunks along T (gridDim.z)
    L: int  # steps per global chunk (a multiple of nseg*N; T when C == 1)
    N: int  # steps per thread per tile

    def grid(self, B, D):
        return (B * (-(-D // self.dpb)), 1, self.C)

    def block(self):
        return (self.dpb, self.nseg, 1)

    def shared_bytes(self, itemsize):
        return 0 if self.nseg == 1 else (4 * self.nseg * (self.dpb + 1) + 2 * self.dpb) * itemsize


def _pow2ceil(n):
    return 1 << max(0, int(n - 1).bit_length())


def plan(B, T, D, N, n_sm, *, backward=False, dpb=None, nseg=None, C=None) -> Plan:
    """The launch plan for (B, T, D) (see the module docstring); keyword overrides force a path
    (tests use them to run the segmented and chunked paths on small shapes) and are kept as given:
    the other fields adapt to them, and `check_plan` refuses a forced plan that breaks the rule."""
    want = 1024 * n_sm
    auto_dpb, auto_nseg = dpb is None, nseg is None
    if auto_nseg:
        nseg = 1
        while 4 * B * D * nseg <= want and nseg < (16 if backward else 32) and 2 * nseg * N <= T:
            nseg *= 2
    if not backward and nseg >= 32 and N > 8:
        N = 8  # 32 segments of 8 steps beat 32 of 16 and 16 of 16 at (8, 65536, 256) on an H100
    # thread per channel: 128-thread blocks (a 32-thread block would cap an SM at 32 warps);
    # segments: 256-thread blocks, as many channels as fit (the widest rows per warp load)
    dpb = dpb or min(128 if nseg == 1 else 256 // nseg, _pow2ceil(D))
    if nseg > 1:  # whole warps: a field the caller forced is never changed
        if auto_nseg:
            nseg = max(nseg, 32 // dpb)
        elif auto_dpb:
            dpb = max(dpb, 32 // nseg)
        while auto_dpb and dpb * nseg > 256 and dpb > 8:
            dpb //= 2
    if C is None:
        C = 1
        threads = B * D * nseg
        if threads < want // 8:
            C = min(_pow2ceil(want // 2 // max(threads, 1)), max(1, T // (8 * nseg * N)))
    tile = nseg * N
    per_chunk = -(-T // max(C, 1))
    L = max(1, T) if C <= 1 else -(-per_chunk // tile) * tile  # whole tiles per chunk
    C = max(1, -(-T // L)) if T > 0 else 1
    return Plan(dpb, nseg, C, L, N)


_override: dict = {}


def cell_plan(cell: str, shape, dtype, n_sm, **override) -> Plan:
    """`plan` for one cell on (B, T, D) of a storage dtype: N and the backward rule follow the cell;
    fields forced by `plan_override` (and then by `override`) win. The plan every launch uses."""
    c = CELLS[cell]
    return plan(*shape, steps_per_thread(acc_dtype(dtype), cell), n_sm, backward=c.backward,
                **{**_override, **override})


def check_plan(p: Plan) -> None:
    """The one rule every launch obeys (`plan` only makes such plans; a forced one may not): at most
    256 threads a block, nseg a power of two <= 32, whole warps when nseg > 1 (lane groups of nseg
    scan the segment totals). Shared memory then stays under 21 KB even for 16-byte values."""
    threads = p.dpb * p.nseg
    if (p.dpb < 1 or p.C < 1 or threads > MAX_THREADS or not 1 <= p.nseg <= MAX_SEGMENTS
            or p.nseg & (p.nseg - 1) or (p.nseg > 1 and threads % 32)):
        raise ValueError(f"unusable launch plan {p}: expected dpb * nseg <= {MAX_THREADS} threads, nseg a "
                         f"power of two <= {MAX_SEGMENTS}, dpb * nseg a multiple of 32 when nseg > 1, C >= 1")


@contextlib.contextmanager
def plan_override(**fields):
    """Force plan fields (dpb, nseg, C: positive ints) for every GPU launch inside the block, on both
    engines (tests run every kernel path on small shapes this way; plan sweeps tune `plan`)."""
    for k, v in fields.items():
        if k not in PLAN_FIELDS:
            raise TypeError(f"plan_override: unknown field {k!r}; expected some of {', '.join(PLAN_FIELDS)}")
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"plan_override: {k} must be a positive int, got {v!r}")
    saved = dict(_override)
    _override.update({k: int(v) for k, v in fields.items()})
    try:
        yield
    finally:
        _override.clear()
        _override.update(saved)


# ------------------------------------------------------------------------------ the launch sequence
@dataclass(frozen=True)
class Target:
    """Where a launch runs, as an engine describes it. `kernels(cell, storage dtype name, N)` returns
    (scan, carry), each called as k(grid, block, shared_bytes, arrays, ints) with the arguments of
    mc_scan / mc_carry in scan_kernels.cu (arrays flat or shaped, ints as Python ints)."""

    xp: Any  # array module of the buffers (cupy; numpy under the host emulation or the simulator)
    n_sm: int  # multiprocessors (0: the smallest plan, a thread per channel)
    kernels: Callable[[str, str, int], tuple[Callable, Callable]]


def launch(target: Target, cell: str, xs, ys, h0, s0, *, fin=None, reverse=False, flags=0):
    """Run `cell` over (B, T, D) = ys[0].shape: read xs, h0 (the state before t = 0) and s0 (the scan's
    initial state), write ys and, when given, fin (the final state). Returns the per-thread partial
    sums (B, C, nseg, D) of a cell that writes them, else None."""
    c, (B, T, D) = CELLS[cell], ys[0].shape
    if len(xs) != c.inputs or len(ys) != c.outputs:
        raise ValueError(f"{cell} reads {c.inputs} arrays and writes {c.outputs}, got {len(xs)} and {len(ys)}")
    xp, dtype = target.xp, ys[0].dtype
    acc = acc_dtype(dtype)
    p = cell_plan(cell, (B, T, D), dtype, target.n_sm)
    check_plan(p)
    scan_k, carry_k = target.kernels(cell, dtype.name, p.N)

    def scratch(dt):  # a slot of its own: numba's simulator copies every argument back after a
        return xp.empty(1, dtype=dt)  # launch, so an alias of a written output would overwrite it

    x = (*xs, *[xs[0]] * (5 - len(xs)))  # unused inputs are never read
    y = (*ys, *(scratch(dtype) for _ in range(3 - len(ys))))
    part = xp.empty((B, p.C, p.nseg, D), dtype=acc) if c.partials else scratch(acc)
    cA, cB = (xp.empty((B, p.C, D), dtype=acc) if p.C > 1 else scratch(acc) for _ in range(2))
    grid, block, smem = p.grid(B, D), p.block(), p.shared_bytes(acc.itemsize)
    arrays = (*x, h0, s0, *y, fin if fin is not None else scratch(dtype), part, cA, cB)

    def scan(mode, want_fin):
        scan_k(grid, block, smem, arrays, (B, T, D, p.L, int(reverse), mode, flags, int(want_fin)))

    if p.C == 1:
        scan(MODE_FULL, fin is not None)
    else:
        scan(MODE_TOTALS, False)
        carry_k(((B * D + 255) // 256, 1, 1), (256, 1, 1), 0, (cA, cB, s0), (B, p.C, D))
        scan(MODE_APPLY, fin is not None)
    return part if c.partials else None


def make_api(target_of: Callable[[Any], Target]) -> dict:
    """The engine interface (see mincore.backend) over `launch`; `target_of(x)` gives the Target for
    arrays like x (the current device and stream)."""

    def forward(cell, xs, h0, *, reverse=False, flags=0):
        t = target_of(xs[-1])
        y = t.xp.empty(xs[-1].shape, dtype=xs[-1].dtype)
        if y.size:
            launch(t, cell, xs, (y,), h0, h0, reverse=reverse, flags=flags)
        return y

    def backward(cell, xs, h0, *, flags=0):
        """(outputs, dh0, partial sums or None); the backward cells read dh last."""
        t = target_of(xs[-1])
        ys = tuple(t.xp.empty(xs[-1].shape, dtype=xs[-1].dtype) for _ in range(CELLS[cell].outputs))
        dh0, part = t.xp.zeros_like(h0), None
        if ys[0].size:
            part = launch(t, cell, xs, ys, h0, t.xp.zeros_like(h0), fin=dh0, reverse=True, flags=flags)
        return ys, dh0, part

    def scan(a, b, h0, reverse=False):
        return forward("ScanFwd", (a, b), h0, reverse=bool(reverse))

    def scan_backward(a, h, dh, h0):
        (da, db), dh0, _ = backward("ScanBwd", (a, h, dh), h0)
        return da, db, dh0

    def min_gru(k, v, h0, log_space):
        return forward("GruFwd", (k, v), h0, flags=LOG_SPACE * bool(log_space))

    def min_gru_backward(k, v, h, dh, h0, log_space):
        (dk, dv), dh0, _ = backward("GruBwd", (k, v, h, dh), h0, flags=LOG_SPACE * bool(log_space))
        return dk, dv, dh0

    def _lstm_flags(normalize, log_space):
        return LOG_SPACE * bool(log_space) | NORMALIZE * bool(normalize)

    def min_lstm(kf, ki, v, h0, normalize, log_space):
        return forward("LstmFwd", (kf, ki, v), h0, flags=_lstm_flags(normalize, log_space))

    def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space):
        ys, dh0, _ = backward("LstmBwd", (kf, ki, v, h, dh), h0, flags=_lstm_flags(normalize, log_space))
        return (*ys, dh0)

    def lru_scan(lam, bu, h0):
        return forward("LruFwd", (lam, bu), h0)

    def lru_scan_backward(lam, h, dh, h0):
        (dbu,), dh0, part = backward("LruBwd", (lam, h, dh), h0)
        dlam = part.reshape(-1, h.shape[2]).sum(axis=0) if part is not None else target_of(h).xp.zeros_like(lam)
        return dlam.astype(lam.dtype, copy=False), dbu, dh0

    return {f.__name__: f for f in (scan, scan_backward, min_gru, min_gru_backward, min_lstm,
                                    min_lstm_backward, lru_scan, lru_scan_backward)}
