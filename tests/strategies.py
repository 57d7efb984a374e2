"""Hypothesis strategies for the kernel tests, in one place.

Shapes are (B, T, D) with T drawn from the lengths that break scans (0, 1, 2, 17), short random
lengths, and one long case (LONG_T > 1000, deliberately not a power of two). Small arrays are drawn
element by element with hypothesis.extra.numpy, so shrinking finds boundary values (0, 1, equal
entries); large arrays come from a drawn seed, because drawing 10^4 elements one by one is slow and
a failing seed reproduces just as well. Values are drawn in float64 and cast, so a float32 engine
and the float64 oracle see exactly the same inputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

LONG_T = 1031
SPECIAL_T = (0, 1, 2, 17, LONG_T)
ELEMENTWISE_MAX = 200  # arrays up to this many elements are drawn element by element

dtypes = st.sampled_from(["float64", "float32"])
complex_dtypes = st.sampled_from(["complex128", "complex64"])
lengths = st.one_of(st.sampled_from(SPECIAL_T), st.integers(3, 40))


@st.composite
def shapes(draw, max_b=3, max_d=6, t=lengths):
    """(B, T, D) with B, D >= 1 and T from `t` (default: 0, 1, 2, 17, LONG_T or 3..40)."""
    return draw(st.integers(1, max_b)), draw(t), draw(st.integers(1, max_d))


# (low, high) for hypothesis-drawn elements, and (kind, p1, p2) for seeded draws of large arrays
KINDS = {
    "gate": ((1e-3, 1.0), ("uniform", 1e-3, 1.0)),  # a in (0, 1]: admissible for every engine
    "signed": ((-4.0, 4.0), ("normal", 0.0, 1.5)),  # b, v, h0, dh: any sign
    "preact": ((-8.0, 8.0), ("normal", 0.0, 3.0)),  # k, kf, ki: saturating sigmoids included
}


@st.composite
def values(draw, shape, kind="signed", dtype="float64"):
    """A C-contiguous array of `shape` and `dtype` with elements of `kind` (see KINDS)."""
    (lo, hi), (dist, p1, p2) = KINDS[kind]
    if int(np.prod(shape)) <= ELEMENTWISE_MAX:
        x = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_subnormal=False)))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = getattr(rng, dist)(p1, p2, size=shape)
    return np.ascontiguousarray(x.astype(dtype))


# Saturated pre-activations: where exp over- or underflows in float32 (|k| ~ 87-104) and float64
# (|k| ~ 708-745), far beyond (|k| up to 1e4), and ordinary values between them so gates mix.
EDGES = (87.0, 88.0, 88.7, 89.0, 90.0, 95.0, 100.0, 103.9, 104.0, 708.0, 709.0, 709.8, 710.0, 745.0, 750.0, 800.0)
_SATURATED = st.one_of(st.floats(-8.0, 8.0), st.floats(-1e4, 1e4), st.sampled_from(EDGES),
                       st.sampled_from(EDGES).map(lambda x: -x))


@st.composite
def saturated(draw, shape, dtype="float64"):
    """A C-contiguous pre-activation array mixing saturating values (EDGES, |k| up to 1e4) and ordinary
    ones; large arrays from a drawn seed, a third of the entries saturated."""
    if int(np.prod(shape)) <= ELEMENTWISE_MAX:
        x = draw(hnp.arrays(np.float64, shape, elements=_SATURATED))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        big = rng.choice(np.concatenate([EDGES, rng.uniform(0, 1e4, 16)]), size=shape)
        x = np.where(rng.uniform(size=shape) < 1 / 3, big * rng.choice([-1.0, 1.0], size=shape),
                     rng.normal(0, 3, size=shape))
    return np.ascontiguousarray(x.astype(dtype))


@st.composite
def complex_values(draw, shape, dtype="complex128", scale=1.0):
    """Complex array with real and imaginary parts drawn as `signed` values times `scale`."""
    real = np.empty(0, dtype).real.dtype.name
    re = draw(values(shape, "signed", real))
    im = draw(values(shape, "signed", real))
    return np.ascontiguousarray((re + 1j * im) * scale).astype(dtype)


@st.composite
def lambdas(draw, d, dtype="complex128"):
    """LRU eigenvalues lam = r exp(i theta): r in [0.05, 0.999] (|lam| < 1, Orvieto et al. sec. 3),
    theta in [-pi, pi] (both half planes, the negative real axis included)."""
    r = draw(hnp.arrays(np.float64, (d,), elements=st.floats(0.05, 0.999)))
    theta = draw(hnp.arrays(np.float64, (d,), elements=st.floats(-np.pi, np.pi)))
    return (r * np.exp(1j * theta)).astype(dtype)


@st.composite
def initial_states(draw, shape, dtype="float64", complex_=False):
    """h0 of shape (B, D) or None (zeros)."""
    B, _, D = shape
    if not draw(st.booleans()):
        return None
    if complex_:
        return draw(complex_values((1, B, D), dtype))[0].copy()
    return draw(values((B, D), "signed", dtype))


flags = st.booleans()


def lru_inputs(shape, dtype, seed=3):
    """Fixed-seed LRU inputs (lam, bu, dh, h0) of (B, T, D) `shape` in complex `dtype`, |lam| in
    [0.5, 0.99], and the matching real dtype: the GPU engines' direct (non-hypothesis) LRU cases."""
    rng = np.random.default_rng(seed)
    B, T, D = shape
    lam = (rng.uniform(0.5, 0.99, D) * np.exp(1j * rng.uniform(0, np.pi, D))).astype(dtype)

    def c(*s):
        return (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(dtype)

    bu, dh, h0 = c(B, T, D), c(B, T, D), c(B, D)
    return lam, bu, dh, h0, (np.float32 if dtype == np.complex64 else np.float64)
