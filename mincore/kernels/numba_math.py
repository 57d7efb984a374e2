"""Vectorisable exp / sigmoid / g for the numba kernels.

Why: LLVM turns `math.exp` into a scalar libm call, which blocks vectorisation of the whole loop. A
scalar exp runs at ~3 GB/s on this machine class where memory moves ~18 GB/s, so the gate math, not
memory, would bound the fused kernels. These functions are plain arithmetic plus one bit cast, so a
loop over D that calls them compiles to AVX2/AVX-512 code.

exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n ln2 (Cody-Waite: ln2 split in a high part with
few mantissa bits, so n * LN2_HI is exact), p a polynomial, 2^n built by writing n + bias into the
exponent bits. float32: Cephes expf polynomial (max relative error ~1e-7, float32 rounding);
float64: degree-13 Taylor polynomial (|r| <= ln2/2 gives truncation error < 1e-16).
Arguments are clamped to the finite range ([-87, 88] float32, [-708, 709] float64), so results
stay finite and normal (below the range exp is off by less than the smallest normal number, an
absolute error no caller can see); NaN stays NaN, so it reaches the kernels' outputs as it does the
oracle's.

Saturated gates. sigmoid and 1 - sigmoid are formed as in the oracle (kernels/gates.py): from
e = exp(-|x|) in (0, 1], p = 1 / (1 + e) in [1/2, 1] and q = e p in (0, 1/2], the larger of the pair is
p and never rounds through the subnormal range. Forming sigmoid(x) as 1 / (1 + exp(-x)) for x <= -88
(float32) instead made it subnormal, the backward kernels' flush-to-zero (numba_fpenv) turned it into
0, and 1 - z = e * sigmoid(x) became 0 instead of 1: dh0 = 0 where the exact gradient is T.

Dispatch on the argument's type happens at compile time through `numba.extending.overload`, and all
constants are typed (a float64 literal would silently promote float32 code to float64).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def _bits_to_float(typingctx, i):
    """Reinterpret int32 -> float32 / int64 -> float64 bits (no conversion)."""
    if i == types.int32:
        ft, lt = types.float32, ir.FloatType()
    elif i == types.int64:
        ft, lt = types.float64, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lt)

    return ft(i), codegen


# Horner's rule written out: a loop over a coefficient tuple stays a loop in numba's IR and stops
# LLVM from vectorising the caller's loop over D.
@njit
def _horner8(r, c):
    c0, c1, c2, c3, c4, c5, c6, c7 = c
    return ((((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r + c6) * r + c7


@njit
def _horner14(r, c):
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13 = c
    p = ((((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5) * r + c6) * r + c7
    return (((((p * r + c8) * r + c9) * r + c10) * r + c11) * r + c12) * r + c13


_horner = {8: _horner8, 14: _horner14}


def _make(ft, it, mantissa_bits, bias, lo, hi, coeffs):
    LO, HI, ZERO, HALF, ONE = ft(lo), ft(hi), ft(0.0), ft(0.5), ft(1.0)
    RCAP = ft(hi - 2.0)  # 1 / (1 + exp(RCAP)) is still a normal number
    TINY = ft(np.finfo(ft).tiny)
    LOG2E = ft(1.0 / math.log(2.0))
    LN2_HI = ft(0.693359375)  # 9 significant bits: n * LN2_HI is exact for |n| < 2^15
    # ln 2 - LN2_HI from ln 2 to 36 digits: math.log(2) - LN2_HI would carry fl(ln 2)'s own rounding
    # error (2e-17), which n ~ 1000 turns into a 2e-14 relative error of exp near 700
    LN2_LO = ft(-2.12194440054690582767878541823432e-4)
    BIAS, SHIFT = it(bias), it(mantissa_bits)
    C = tuple(ft(c) for c in coeffs)
    poly = _horner[len(C)]

    def fexp(x):
        # comparisons, not min/max: a NaN argument passes the clamp unchanged (and n is formed from
        # 0 there, so the float -> int conversion never sees a NaN); the polynomial then gives NaN
        x = HI if x > HI else (LO if x < LO else x)
        n = np.floor((x if x == x else ZERO) * LOG2E + HALF)
        r = (x - n * LN2_HI) - n * LN2_LO
        return poly(r, C) * _bits_to_float(it(it(it(n) + BIAS) << SHIFT))

    def fsigmoid_pair(x):
        # (sigmoid(x), sigmoid(-x)) from one exp of -|x| (the module docstring: saturated gates)
        e = fast_exp(-abs(x))
        p = ONE / (ONE + e)
        q = e * p
        pos = x >= ZERO
        return (p if pos else q), (q if pos else p)

    def fsigmoid(x):
        return fast_sigmoid_pair(x)[0]

    # Both branches computed, then selected (so the caller's loop vectorises); NaN selects the
    # sigmoid branch, which is NaN, as in the oracle (a max of the two branches dropped the NaN).
    def fg(x):
        s = fast_sigmoid(x)
        return x + HALF if x >= ZERO else s

    def fdg(x):
        s, c = fast_sigmoid_pair(x)
        return ONE if x >= ZERO else s * c

    def flstm(kf, ki):
        # minLSTM's normalised gates (f', i') = (f, i) / (f + i), with 1 - f and 1 - i: every sigmoid
        # is e^min(k, 0) times p in [1/2, 1], so i / f = R pi / pf with R = e^(min(ki, 0) - min(kf, 0))
        # and the tiny factors cancel inside one exp. A ratio of two clamped exps instead gave
        # f' = 1/2 at kf = -90, ki = -95 (exact: sigmoid(5) = 0.9933) and 0 / 0 once both flushed.
        f, cf = fast_sigmoid_pair(kf)
        i, ci = fast_sigmoid_pair(ki)
        pf = f if kf >= ZERO else cf
        pi = i if ki >= ZERO else ci
        d = (ki if ki < ZERO else ZERO) - (kf if kf < ZERO else ZERO)
        # capped so that r below stays a normal number (flush-to-zero would make it 0, and i' = 0 * R)
        ri = fast_exp(RCAP if d > RCAP else d) * pi
        r = ONE / (pf + ri)  # pf + ri >= 1/2
        return pf * r, ri * r, cf, ci

    def fflush(x):
        # subnormal -> 0, branch-free. Backward gradients that decay through many steps reach the
        # subnormal range (e.g. a loss on the last 16 of 256 positions); arithmetic on subnormals, in
        # these kernels and in the GEMMs that consume their outputs, ran ~10-70x slower (measured).
        return x * (abs(x) >= TINY)

    # the closures call the overloaded stubs below (resolved when a kernel is compiled)
    return {"exp": fexp, "sigmoid": fsigmoid, "sigmoid_pair": fsigmoid_pair, "g": fg, "dg": fdg,
            "lstm_gates": flstm, "flush": fflush}


def _taylor(deg):
    return [1.0 / math.factorial(j) for j in range(deg, -1, -1)]


# Cephes expf: exp(r) ~ 1 + r + r^2 (0.5 + r (1/6 + ...)) written as one Horner polynomial
_CEPHES_F32 = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
               5.0000001201e-1, 1.0, 1.0]
_IMPL = {
    types.float32: _make(np.float32, np.int32, 23, 127, -87.0, 88.0, _CEPHES_F32),
    types.float64: _make(np.float64, np.int64, 52, 1023, -708.0, 709.0, _taylor(13)),
}


def fast_exp(x):
    """exp(x) in the argument's precision (numba only)."""
    raise NotImplementedError("numba-only")


def fast_sigmoid(x):
    """1 / (1 + exp(-x)) in the argument's precision (numba only)."""
    raise NotImplementedError("numba-only")


def fast_sigmoid_pair(x):
    """(sigmoid(x), 1 - sigmoid(x)) without cancellation (numba only)."""
    raise NotImplementedError("numba-only")


def fast_g(x):
    """g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0) (numba only)."""
    raise NotImplementedError("numba-only")


def fast_dg(x):
    """g'(x) (numba only)."""
    raise NotImplementedError("numba-only")


def fast_lstm_gates(kf, ki):
    """(f', i', 1 - f, 1 - i): minLSTM's normalised gates f / (f + i), i / (f + i) for any kf, ki,
    and the complements of f = sigmoid(kf), i = sigmoid(ki) (numba only)."""
    raise NotImplementedError("numba-only")


def flush_subnormal(x):
    """x, or 0 where |x| is below the smallest normal number (numba only)."""
    raise NotImplementedError("numba-only")


def _register(stub, key):
    @overload(stub)
    def _ov(x):
        impl = _IMPL.get(x)
        return None if impl is None else impl[key]


@overload(fast_lstm_gates, inline="always")
def _ov_lstm_gates(kf, ki):
    impl = _IMPL.get(kf)
    return None if impl is None or ki != kf else impl["lstm_gates"]


for _stub, _key in ((fast_exp, "exp"), (fast_sigmoid, "sigmoid"), (fast_sigmoid_pair, "sigmoid_pair"),
                    (fast_g, "g"), (fast_dg, "dg"),
                    (flush_subnormal, "flush")):
    _register(_stub, _key)
