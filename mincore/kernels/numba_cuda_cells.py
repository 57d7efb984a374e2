"""Per-element device functions ("cells") of the numba-cuda engine: the numba twin of the cell
structs in scan_common.cu. Each cell is a pair of device functions

    coef(x0..x4, h0, i, ip, hb, D, flags) -> (a, b)      the scan coefficients of element i
    emit(x0..x4, h0, y0, y1, y2, i, ip, hb, D, flags, s) -> (s_out, part)   writes the outputs

with i the flat index of (b, t, d), ip that of h_{t-1} (-1: use h0[hb], hb = b*D + d). Backward
cells scan c_t = a_t c_{t+1} + a_t dh_t in reverse (G_t = dh_t + c_{t+1}; see scan_common.cu).
"""

from __future__ import annotations

import functools
import math

from numba import cuda

dev = cuda.jit(device=True, inline=True)


@functools.cache
def real_cells(rdt):
    """Cells for real type `rdt` (np.float32 / np.float64): constants are typed rdt so float32
    arithmetic stays float32 on the GPU."""
    one, zero, half = rdt(1), rdt(0), rdt(0.5)

    @dev
    def sig2(x):  # (sigmoid(x), sigmoid(-x)) from one exp of a non-positive argument
        e = rdt(math.exp(-abs(x)))
        r = one / (one + e)
        return (r, e * r) if x >= zero else (e * r, r)

    @dev
    def softplus(x):
        return (x if x > zero else zero) + rdt(math.log1p(math.exp(-abs(x))))  # no max(): vararg

    @dev
    def htilde(v, flags):  # (h~, dh~/dv): g(v) of appendix B in log-space mode, else v
        if (flags & 1) == 0:
            return v, one
        s, sn = sig2(v)
        return (v + half, one) if v >= zero else (s, s * sn)

    @dev
    def gates(kf, ki, flags):  # minLSTM: (a, i-gate, 1 - f, 1 - i)
        f, fn = sig2(kf)
        i, inn = sig2(ki)
        if flags & 2:
            ip, fp = sig2(softplus(-kf) - softplus(-ki))
            return fp, ip, fn, inn
        return f, i, fn, inn

    @dev
    def hprev(h, h0, ip, hb):
        return h[ip] if ip >= 0 else h0[hb]

    @dev
    def scan_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):
        return rdt(x0[i]), rdt(x1[i])

    @dev
    def scan_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        h = rdt(x0[i]) * s + rdt(x1[i])
        y0[i] = h
        return h, zero

    @dev
    def scanb_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):  # x: a, h, dh
        a = rdt(x0[i])
        return a, a * rdt(x2[i])

    @dev
    def scanb_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        G = rdt(x2[i]) + s
        y0[i] = G * rdt(hprev(x1, h0, ip, hb))
        y1[i] = G
        return rdt(x0[i]) * G, zero

    @dev
    def gru_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):  # x: k, v (h, dh)
        z, a = sig2(rdt(x0[i]))
        ht, dht = htilde(rdt(x1[i]), flags)
        return a, z * ht

    @dev
    def grub_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):
        z, a = sig2(rdt(x0[i]))
        return a, a * rdt(x3[i])

    @dev
    def gru_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        z, a = sig2(rdt(x0[i]))
        ht, dht = htilde(rdt(x1[i]), flags)
        h = a * s + z * ht
        y0[i] = h
        return h, zero

    @dev
    def grub_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        z, a = sig2(rdt(x0[i]))
        ht, dht = htilde(rdt(x1[i]), flags)
        G = rdt(x3[i]) + s
        y0[i] = G * (ht - rdt(hprev(x2, h0, ip, hb))) * z * a
        y1[i] = G * z * dht
        return a * G, zero

    @dev
    def lstm_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):  # x: kf, ki, v (h, dh)
        a, ig, fn, inn = gates(rdt(x0[i]), rdt(x1[i]), flags)
        ht, dht = htilde(rdt(x2[i]), flags)
        return a, ig * ht

    @dev
    def lstmb_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):
        a, ig, fn, inn = gates(rdt(x0[i]), rdt(x1[i]), flags)
        return a, a * rdt(x4[i])

    @dev
    def lstm_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        a, ig, fn, inn = gates(rdt(x0[i]), rdt(x1[i]), flags)
        ht, dht = htilde(rdt(x2[i]), flags)
        h = a * s + ig * ht
        y0[i] = h
        return h, zero

    @dev
    def lstmb_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        a, ig, fn, inn = gates(rdt(x0[i]), rdt(x1[i]), flags)
        ht, dht = htilde(rdt(x2[i]), flags)
        G = rdt(x4[i]) + s
        da = G * rdt(hprev(x3, h0, ip, hb))
        if flags & 2:  # d f'/d diff = -f' i', d i'/d diff = f' i'
            dd = a * ig * (G * ht - da)
            y0[i] = -fn * dd
            y1[i] = inn * dd
        else:
            y0[i] = da * a * fn
            y1[i] = G * ht * ig * inn
        y2[i] = G * ig * dht
        return a * G, zero

    return {"ScanFwd": (scan_coef, scan_emit), "ScanBwd": (scanb_coef, scanb_emit),
            "GruFwd": (gru_coef, gru_emit), "GruBwd": (grub_coef, grub_emit),
            "LstmFwd": (lstm_coef, lstm_emit), "LstmBwd": (lstmb_coef, lstmb_emit)}


@functools.cache
def lru_cells(cdt):
    """LRU cells for complex type `cdt`: x0 = lam (D,); forward x1 = bu; backward x1 = h, x2 = dh
    with dL/dRe + i dL/dIm gradients: a = conj(lam), part = G_t conj(h_{t-1}) summed into dlam."""
    zero = cdt(0)

    @dev
    def lru_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):
        return x0[hb % D], x1[i]

    @dev
    def lru_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        h = x0[hb % D] * s + x1[i]
        y0[i] = h
        return h, zero

    @dev
    def lrub_coef(x0, x1, x2, x3, x4, h0, i, ip, hb, D, flags):
        a = x0[hb % D].conjugate()
        return a, a * x2[i]

    @dev
    def lrub_emit(x0, x1, x2, x3, x4, h0, y0, y1, y2, i, ip, hb, D, flags, s):
        G = x2[i] + s
        hp = x1[ip] if ip >= 0 else h0[hb]
        y0[i] = G
        return x0[hb % D].conjugate() * G, G * hp.conjugate()

    return {"LruFwd": (lru_coef, lru_emit), "LruBwd": (lrub_coef, lrub_emit)}
