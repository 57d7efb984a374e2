"""The numba side of mincore.inference: one whole token of a SequenceModel in one compiled call.

Weights arrive flattened into one array `P` (the model's dtype) and a table of int64 offsets and
sizes `L` (the layout: mincore.inference.pack writes it, the constants below name its slots), so a
call unboxes a handful of arrays instead of one per weight. Rows of the batch are independent, so
they are cut into tiles of up to TILE rows; a tile runs the whole stack (embedding, every block,
the final norm and the head), and each weight row it reads serves every row of the tile while it
is in L1. The batched entry points run the tiles with prange, the batch-1 ones serially (a parallel
launch costs more than a token of the default Shakespeare model); generation runs a whole chunk of
tokens per tile inside one launch, since rows never wait for each other.

The arithmetic is the kernels': gates from numba_math (saturation-exact sigmoid pairs, minLSTM's
normalised gates, g), GELU as mincore.kernels.numba_act computes it, norms as mincore.autograd's
functional forms, so the fused step equals the per-op step to rounding (sums run in another order
than BLAS's). Matrices are (in, out) row-major as nn.Linear stores them; a product sums the inputs
in order and adds the bias last, as the GEMM does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from mincore.kernels.numba_math import fast_g, fast_lstm_gates, fast_sigmoid_pair

U = np.uint64
# rows per tile: one weight row read from cache serves this many batch rows (16 against 4: ~1.2x
# the characters per CPU second at batch 16 and 64 on the 2-core machine; their outputs fill ~32 KB of L1)
TILE = 16
FLAGS = dict(fastmath={"contract"}, error_model="numpy", nogil=True, cache=True)

# layout header: L[0:HEAD]
N_BLOCKS, D, STATE, WIDTH, EMBED, NORM, HEAD_W, HEAD_B, V_OUT = 0, 1, 2, 3, 4, 5, 9, 10, 11  # NORM: 4 slots
HEAD = 16
# a norm is 4 slots: kind (0 rms, 1 layer), weight, bias (-1: none), eps (offsets into P)
RMS, LAYER = 0, 1
# one block: L[HEAD + i BLOCK : HEAD + (i + 1) BLOCK]
(CONV_K, CONV_W, CONV_B, PREFIX, NORM1, CELL, INNER, HID_W, HID_B, LOG_SPACE, NORMALIZE, OUT_W, LAM, SKIP_D,
 H, MLP, NORM2, FC1_W, FC1_B, FC2_W, FC2_B, MLP_HIDDEN) = (0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                                         18, 19, 23, 24, 25, 26, 27)
BLOCK = 32
GRU, LSTM, LRU = 0, 1, 2
NONE = -1


@njit(**FLAGS)
def linear(P, w, b, x, y, nr, din, dout):
    """y[r, :dout] = x[r, :din] @ W + b for r < nr; W at P[w:] (din, dout), b at P[b:] (b < 0: none).
    Unsigned offsets into P: a signed one costs a wraparound select per element (numba_scan)."""
    zero = P.dtype.type(0)
    for r in range(nr):
        for j in range(dout):
            y[r, U(j)] = zero
    for i in range(din):
        o = U(w + i * dout)
        for r in range(nr):
            xi = x[r, i]
            for j in range(dout):
                y[r, U(j)] += xi * P[o + U(j)]
    if b >= 0:
        for r in range(nr):
            for j in range(dout):
                y[r, U(j)] += P[U(b + j)]


@njit(**FLAGS)
def norm(P, L, at, x, y, nr, d):
    """y = RMSNorm or LayerNorm of x (F.rms_norm / F.layer_norm's formulas), the norm at L[at:at+4]."""
    kind, w, b, eps = L[at], L[at + 1], L[at + 2], P[L[at + 3]]
    ft = P.dtype.type  # every constant in the model's dtype: an int64 would promote float32 to float64
    n, zero, one = ft(d), ft(0), ft(1)
    for r in range(nr):
        if kind == LAYER:
            mu = zero
            for j in range(d):
                mu += x[r, j]
            mu /= n
            ss = zero
            for j in range(d):
                y[r, j] = x[r, j] - mu
                ss += y[r, j] * y[r, j]
        else:
            ss = zero
            for j in range(d):
                y[r, j] = x[r, j]
                ss += x[r, j] * x[r, j]
        s = one / np.sqrt(ss / n + eps)
        for j in range(d):
            y[r, j] = y[r, j] * s * P[w + j]
        if b >= 0:
            for j in range(d):
                y[r, j] += P[b + j]


@njit(**FLAGS)
def conv(P, blk, S, r0, x, nr, d):
    """x += CausalConv1d(x) for one step; the block's K-1 previous inputs in S shift by one."""
    K, w, b, at = blk[CONV_K], blk[CONV_W], blk[CONV_B], blk[PREFIX]
    for r in range(nr):
        s = S[r0 + r]
        for j in range(d):
            c = x[r, j] * P[w + (K - 1) * d + j]
            for k in range(K - 1):
                c += s[at + k * d + j] * P[w + k * d + j]
            if b >= 0:
                c += P[b + j]
            for k in range(K - 2):  # the oldest input leaves, this one joins
                s[at + k * d + j] = s[at + (k + 1) * d + j]
            if K > 1:
                s[at + (K - 2) * d + j] = x[r, j]
            x[r, j] += c


@njit(**FLAGS)
def cell(P, blk, S, r0, xn, pre, h, nr, d):
    """h[r] = the cell's new state (pairs for the LRU) from xn, written to S too; returns its width."""
    kind, n, at = blk[CELL], blk[INNER], blk[H]
    n_pre = 2 if kind != LSTM else 3
    linear(P, blk[HID_W], blk[HID_B], xn, pre, nr, d, n_pre * n if kind != LRU else 2 * n)
    for r in range(nr):
        s = S[r0 + r]
        if kind == LRU:
            lam = blk[LAM]
            for j in range(n):  # h = Lambda h + gamma B u, complex as (Re, Im) pairs
                lr, li, hr, hi = P[lam + 2 * j], P[lam + 2 * j + 1], s[at + 2 * j], s[at + 2 * j + 1]
                h[r, 2 * j] = lr * hr - li * hi + pre[r, 2 * j]
                h[r, 2 * j + 1] = lr * hi + li * hr + pre[r, 2 * j + 1]
            for j in range(2 * n):
                s[at + j] = h[r, j]
            continue
        for j in range(n):
            v = pre[r, (n_pre - 1) * n + j]
            u = fast_g(v) if blk[LOG_SPACE] else v
            if kind == GRU:
                z, a = fast_sigmoid_pair(pre[r, j])  # a = 1 - z without cancellation
                hj = a * s[at + j] + z * u
            else:
                if blk[NORMALIZE]:
                    f, i, _, _ = fast_lstm_gates(pre[r, j], pre[r, n + j])
                else:
                    f, i = fast_sigmoid_pair(pre[r, j])[0], fast_sigmoid_pair(pre[r, n + j])[0]
                hj = f * s[at + j] + i * u
            h[r, j] = hj
            s[at + j] = hj
    return 2 * n if kind == LRU else n


@njit(**FLAGS)
def gelu(y, nr, n):
    """y = GELU(y), tanh form, as numba_act.gelu: x sigmoid(2c (x + a x^3))."""
    c2, a = y.dtype.type(2.0 * math.sqrt(2.0 / math.pi)), y.dtype.type(0.044715)
    for r in range(nr):
        for j in range(n):
            v = y[r, j]
            y[r, j] = v * fast_sigmoid_pair(c2 * (v + a * v * v * v))[0]


@njit(**FLAGS)
def block(P, blk, S, r0, x, xn, pre, h, nr, d):
    """One residual block on rows r0 .. r0 + nr of x (see mincore.models.Block)."""
    if blk[CONV_K] > 0:
        conv(P, blk, S, r0, x, nr, d)
    norm(P, blk, NORM1, x, xn, nr, d)
    n = cell(P, blk, S, r0, xn, pre, h, nr, d)
    if blk[CELL] == LRU:  # y = Re(C h) + D u: C as pairs (2N, d), u the normalised input
        linear(P, blk[OUT_W], NONE, h, pre, nr, n, d)
        for r in range(nr):
            for j in range(d):
                x[r, j] += pre[r, j] + xn[r, j] * P[blk[SKIP_D] + j]
    elif blk[OUT_W] >= 0:
        linear(P, blk[OUT_W], NONE, h, pre, nr, n, d)
        for r in range(nr):
            for j in range(d):
                x[r, j] += pre[r, j]
    else:
        for r in range(nr):
            for j in range(d):
                x[r, j] += h[r, j]
    if blk[MLP]:
        norm(P, blk, NORM2, x, xn, nr, d)
        linear(P, blk[FC1_W], blk[FC1_B], xn, pre, nr, d, blk[MLP_HIDDEN])
        gelu(pre, nr, blk[MLP_HIDDEN])
        linear(P, blk[FC2_W], blk[FC2_B], pre, h, nr, blk[MLP_HIDDEN], d)
        for r in range(nr):
            for j in range(d):
                x[r, j] += h[r, j]


@njit(**FLAGS)
def tile(P, L, S, X, r0, nr, logits):
    """Rows r0 .. r0 + nr of X through every block (X updated); with logits (rows >= 1), also the
    final norm and the head into logits[r0 + r]."""
    d, width = L[D], L[WIDTH]
    x = np.empty((nr, d), P.dtype)
    xn, pre, h = np.empty((nr, d), P.dtype), np.empty((nr, width), P.dtype), np.empty((nr, width), P.dtype)
    for r in range(nr):
        for j in range(d):
            x[r, j] = X[r0 + r, j]
    for i in range(L[N_BLOCKS]):
        block(P, L[HEAD + i * BLOCK:HEAD + (i + 1) * BLOCK], S, r0, x, xn, pre, h, nr, d)
    for r in range(nr):
        for j in range(d):
            X[r0 + r, j] = x[r, j]
    if logits.shape[0] > 0:
        norm(P, L, NORM, x, xn, nr, d)
        linear(P, L[HEAD_W], L[HEAD_B], xn, pre, nr, d, L[V_OUT])
        for r in range(nr):
            for j in range(L[V_OUT]):
                logits[r0 + r, j] = pre[r, j]


@njit(**FLAGS)
def rows_serial(P, L, S, X, logits):
    """tile() over every row of X, tiles in turn (batch 1, or one thread)."""
    for t in range((X.shape[0] + TILE - 1) // TILE):
        tile(P, L, S, X, t * TILE, min(TILE, X.shape[0] - t * TILE), logits)


@njit(parallel=True, **FLAGS)
def rows_parallel(P, L, S, X, logits):
    """tile() over every row of X, the tiles on numba's threads."""
    for t in prange((X.shape[0] + TILE - 1) // TILE):
        tile(P, L, S, X, t * TILE, min(TILE, X.shape[0] - t * TILE), logits)


@njit(**FLAGS)
def sample(z, u, temperature, top_k):
    """One draw from softmax(z / temperature) over the top_k largest (0: all), as the per-op sampler:
    float64, shifted by the max, cumulative sums searched for u times their total (argmax at T = 0)."""
    V = z.shape[0]
    if temperature <= 0:
        return np.argmax(z)
    q = z.astype(np.float64)
    q = (q - q.max()) / temperature
    if 0 < top_k < V:
        cut = np.sort(q)[V - top_k]
        for j in range(V):
            if q[j] < cut:
                q[j] = -np.inf
    c = np.cumsum(np.exp(q))
    target = u * c[V - 1]
    for j in range(V):
        if c[j] > target:
            return j
    return V - 1


@njit(**FLAGS)
def generate_rows(P, L, S, X, last, u, temperature, top_k, out, r0, nr):
    """Rows r0 .. r0 + nr, for each t < u.shape[0]: draw out[t, r] from last[r] with u[t, r], then run
    those tokens through the model (S, X and last updated in place)."""
    d, w = L[D], L[EMBED]
    for t in range(u.shape[0]):
        for r in range(r0, r0 + nr):
            tok = sample(last[r], u[t, r], temperature, top_k)
            out[t, r] = tok
            for j in range(d):
                X[r, j] = P[w + tok * d + j]
        tile(P, L, S, X, r0, nr, last)


@njit(**FLAGS)
def generate_serial(P, L, S, last, u, temperature, top_k, out):
    """generate_rows over every row, tile by tile (rows are independent: a tile runs all its tokens)."""
    X = np.empty((last.shape[0], L[D]), P.dtype)
    for k in range((X.shape[0] + TILE - 1) // TILE):
        generate_rows(P, L, S, X, last, u, temperature, top_k, out, k * TILE, min(TILE, X.shape[0] - k * TILE))


@njit(parallel=True, **FLAGS)
def generate_parallel(P, L, S, last, u, temperature, top_k, out):
    """generate_serial with the tiles on numba's threads: one launch for the whole chunk of tokens."""
    X = np.empty((last.shape[0], L[D]), P.dtype)
    for k in prange((X.shape[0] + TILE - 1) // TILE):
        generate_rows(P, L, S, X, last, u, temperature, top_k, out, k * TILE, min(TILE, X.shape[0] - k * TILE))
