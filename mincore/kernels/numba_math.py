"""Vectorisable exp / sigmoid / g for the numba kernels.

Why: LLVM turns `math.exp` into a scalar libm call, which blocks vectorisation of the whole loop. A
scalar exp runs at ~3 GB/s on this machine class where memory moves ~18 GB/s, so the gate math, not
memory, would bound the fused kernels. These functions are plain arithmetic plus one bit cast, so a
loop over D that calls them compiles to AVX2/AVX-512 code.

exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n ln2 (Cody-Waite: ln2 split in a high part with
few mantissa bits, so n * LN2_HI is exact), p a polynomial, and 2^n applied by adding n to p's
exponent bits (two integer instructions; building 2^n and multiplying took four). float32: Cephes
expf polynomial (max relative error ~1e-7, float32 rounding); float64: degree-13 Taylor polynomial
(|r| <= ln2/2 gives truncation error < 1e-16). Arguments are clamped to [-86.6, 88] (float32) and
[-708, 709] (float64), where p's exponent plus n stays normal, so results stay finite and normal:
below the range exp returns 2^-125 (float32) or 2^-1021 (float64), an absolute error of two
smallest normal numbers, which no caller can see. NaN stays NaN, so it reaches the kernels'
outputs as it does the oracle's.

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


@intrinsic
def _float_to_bits(typingctx, x):
    """Reinterpret float32 -> int32 / float64 -> int64 bits (no conversion)."""
    if x == types.float32:
        it, lt = types.int32, ir.IntType(32)
    elif x == types.float64:
        it, lt = types.int64, ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], lt)

    return it(x), codegen


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


def _make(ft, it, mantissa_bits, lo, hi, coeffs):
    LO, HI, ZERO, HALF, ONE = ft(lo), ft(hi), ft(0.0), ft(0.5), ft(1.0)
    TINY = ft(np.finfo(ft).tiny)
    LOG2E = ft(1.0 / math.log(2.0))
    LN2_HI = ft(0.693359375)  # 9 significant bits: n * LN2_HI is exact for |n| < 2^15
    # ln 2 - LN2_HI from ln 2 to 36 digits: math.log(2) - LN2_HI would carry fl(ln 2)'s own rounding
    # error (2e-17), which n ~ 1000 turns into a 2e-14 relative error of exp near 700
    LN2_LO = ft(-2.12194440054690582767878541823432e-4)
    SHIFT = it(mantissa_bits)
    C = tuple(ft(c) for c in coeffs)
    poly = _horner[len(C)]

    def fexp(x):
        # select-style clamps (x < LO ? LO : x): a NaN passes unchanged, and each is one max/min
        x = LO if x < LO else x
        x = HI if x > HI else x
        # n from 0 for a NaN (converting NaN to an integer is undefined); p(r) is NaN then
        n = np.floor((x if x == x else ZERO) * LOG2E + HALF)
        r = (x - n * LN2_HI) - n * LN2_LO
        # 2^n p(r) by adding n to p's exponent bits (no 2^n built and multiplied): p in [0.70, 1.42],
        # so with n in [-125, 127] (the clamps) the exponent stays in the normal range
        return _bits_to_float(it(_float_to_bits(poly(r, C)) + it(it(n) << SHIFT)))

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
        # minLSTM's normalised gates from two exps and one division. With a = -kf, b = -ki,
        # f = 1 / (1 + e^a), i = 1 / (1 + e^b), so f' = f / (f + i) = (1 + e^b) / (2 + e^a + e^b).
        # Scaled by e^-m, m = max(a, b, 0), every term is E0 = e^-m, Ea = e^(a-m), Eb = e^(b-m) <= 1
        # and one of the three is exactly 1, so only two exps remain and D = 2 E0 + Ea + Eb >= 1:
        #   f' = (E0 + Eb) / D,  i' = (E0 + Ea) / D,
        # and the backward's products (1 - f) i' = Ea / D, (1 - i) f' = Eb / D share the division.
        # Saturated gates stay exact (kf = -90, ki = -95: Ea = e^-5, Eb = 1, f' = sigmoid(5)); a NaN
        # reaches Ea or Eb through the selects below and with it every output, as in the oracle.
        a, b = -kf, -ki
        ab = a >= b
        p = a if ab else b  # the larger of a, b
        q = b if ab else a  # the other (NaN if a is NaN)
        pos = p >= ZERO
        m = p if pos else ZERO
        eq = fast_exp(q - m)
        e2 = fast_exp(-abs(p))  # e^-p (the E0 term) when p >= 0, else e^p (the Ep term)
        ep = ONE if pos else e2
        e0 = e2 if pos else ONE
        ea = ep if ab else eq
        eb = eq if ab else ep
        r = ONE / (e0 + e0 + ea + eb)
        return (e0 + eb) * r, (e0 + ea) * r, ea * r, eb * r

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
    types.float32: _make(np.float32, np.int32, 23, -86.6, 88.0, _CEPHES_F32),
    types.float64: _make(np.float64, np.int64, 52, -708.0, 709.0, _taylor(13)),
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
    """(f', i', (1 - f) i', (1 - i) f'): minLSTM's normalised gates f / (f + i), i / (f + i) of
    f = sigmoid(kf), i = sigmoid(ki) for any kf, ki, and the two products the backward needs
    (d f'/d kf = (1 - f) f' i' = -d i'/d kf, d i'/d ki = (1 - i) f' i' = -d f'/d ki) (numba only)."""
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
