"""What the two GPU engines ("cupy", "numba-cuda") share: the launch plan (block shape and chunking,
chosen by shape) and the engine-interface functions written once over a `launch` callback.

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
  The shapes of the issue on an H100 (132 SMs), forward / backward: (512, 64, 256) -> nseg 1, dpb 128;
  (64, 512, 256) and (64, 4096, 256) -> nseg 4, dpb 64; (8, 65536, 256) -> nseg 32, dpb 8, N 8 /
  nseg 16, dpb 16 (single pass, no global chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# cell name -> (number of inputs, number of outputs, backward?)
CELLS = {
    "ScanFwd": (2, 1, False), "ScanBwd": (3, 2, True),
    "GruFwd": (2, 1, False), "GruBwd": (4, 2, True),
    "LstmFwd": (3, 1, False), "LstmBwd": (5, 3, True),
    "LruFwd": (2, 1, False), "LruBwd": (3, 1, True),
}
LOG_SPACE, NORMALIZE = 1, 2
MODE_FULL, MODE_TOTALS, MODE_APPLY = 0, 1, 2
ACC = {np.dtype(np.float16): np.dtype(np.float32)}  # accumulation dtype when it differs from storage


def acc_dtype(dtype) -> np.dtype:
    return ACC.get(np.dtype(dtype), np.dtype(dtype))


def steps_per_thread(acc, cell: str) -> int:
    """N: register-resident steps per thread per tile, i.e. loads in flight per input (the most a cell
    takes; `plan` may pick fewer). Forward cells keep 2 values a step (64 registers at N = 16) and
    backward cells 3-5 (64-80 registers at N = 8); 8/16-byte values get 4."""
    if np.dtype(acc).itemsize != 4:
        return 4
    return 8 if CELLS[cell][2] else 16


def steps_options(acc, cell: str) -> tuple[int, ...]:
    """Every N `plan` can pick for a cell (the CUDA C engine compiles one kernel instance each)."""
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
    (tests use them to run the segmented and chunked paths on small shapes)."""
    want = 1024 * n_sm
    auto_dpb = dpb is None
    if nseg is None:
        nseg = 1
        while 4 * B * D * nseg <= want and nseg < (16 if backward else 32) and 2 * nseg * N <= T:
            nseg *= 2
    if not backward and nseg >= 32 and N > 8:
        N = 8  # 32 segments of 8 steps beat 32 of 16 and 16 of 16 at (8, 65536, 256) on an H100
    # thread per channel: 128-thread blocks (a 32-thread block would cap an SM at 32 warps);
    # segments: 256-thread blocks, as many channels as fit (the widest rows per warp load)
    dpb = dpb or min(128 if nseg == 1 else 256 // nseg, _pow2ceil(D))
    if nseg > 1:
        nseg = max(nseg, 32 // dpb)
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


def cell_plan(cell: str, shape, dtype, n_sm, **override) -> Plan:
    """`plan` for one cell on (B, T, D) of a storage dtype: N and the backward rule follow the cell."""
    return plan(*shape, steps_per_thread(acc_dtype(dtype), cell), n_sm, backward=CELLS[cell][2], **override)


def make_api(launch, xp_of):
    """The engine interface over `launch(cell, xs, ys, h0, s0, yfin, part, shape, rev, flags)`,
    which runs one cell (see CELLS) writing ys (and yfin, the final state, and part, the per-thread
    partial sums of dlam, when given). `xp_of(x)` is the array module of x."""

    def fwd(cell, xs, h0, shape, rev=False, flags=0):
        xp = xp_of(xs[-1])
        y = xp.empty(shape, dtype=xs[-1].dtype)
        if y.size:
            launch(cell, xs, (y,), h0, h0, None, None, shape, rev, flags)
        return y

    def bwd(cell, xs, nout, h0, shape, flags=0, part=False):
        xp = xp_of(xs[-1])
        ys = tuple(xp.empty(shape, dtype=xs[-1].dtype) for _ in range(nout))
        dh0 = xp.zeros_like(h0)
        parts = [] if part else None
        if ys[0].size:
            launch(cell, xs, ys, h0, xp.zeros_like(h0), dh0, parts, shape, True, flags)
        return ys, dh0, parts

    def scan(a, b, h0, reverse=False):
        return fwd("ScanFwd", (a, b), h0, b.shape, rev=bool(reverse))

    def scan_backward(a, h, dh, h0):
        (da, db), dh0, _ = bwd("ScanBwd", (a, h, dh), 2, h0, h.shape)
        return da, db, dh0

    def min_gru(k, v, h0, log_space):
        return fwd("GruFwd", (k, v), h0, k.shape, flags=LOG_SPACE * bool(log_space))

    def min_gru_backward(k, v, h, dh, h0, log_space):
        (dk, dv), dh0, _ = bwd("GruBwd", (k, v, h, dh), 2, h0, k.shape, LOG_SPACE * bool(log_space))
        return dk, dv, dh0

    def _lstm_flags(normalize, log_space):
        return LOG_SPACE * bool(log_space) | NORMALIZE * bool(normalize)

    def min_lstm(kf, ki, v, h0, normalize, log_space):
        return fwd("LstmFwd", (kf, ki, v), h0, kf.shape, flags=_lstm_flags(normalize, log_space))

    def min_lstm_backward(kf, ki, v, h, dh, h0, normalize, log_space):
        ys, dh0, _ = bwd("LstmBwd", (kf, ki, v, h, dh), 3, h0, kf.shape, _lstm_flags(normalize, log_space))
        return (*ys, dh0)

    def lru_scan(lam, bu, h0):
        return fwd("LruFwd", (lam, bu), h0, bu.shape)

    def lru_scan_backward(lam, h, dh, h0):
        (dbu,), dh0, parts = bwd("LruBwd", (lam, h, dh), 1, h0, h.shape, part=True)
        dlam = parts[0].reshape(-1, h.shape[2]).sum(axis=0) if parts else xp_of(h).zeros_like(lam)
        return dlam.astype(lam.dtype, copy=False), dbu, dh0

    return {f.__name__: f for f in (scan, scan_backward, min_gru, min_gru_backward, min_lstm,
                                    min_lstm_backward, lru_scan, lru_scan_backward)}
