"""Hardware flush-to-zero for the numba backward kernels (x86-64: the FTZ bit of MXCSR).

Why: backward gradients that decay through many steps reach the subnormal range (a loss on the last
16 of 256 positions), and arithmetic on subnormals, in these kernels and in the GEMMs that consume
their outputs, ran ~10-70x slower (measured; numba_math.flush_subnormal). Flushing in software costs
4 vector instructions per value (abs, compare, and, multiply): 12 of the ~50 per 8 elements of the
min_gru backward. With FTZ set for the duration of a job the hardware does it for free:
measured at (64, 4096, 256) float32, 2 threads, same run, kernel alone: 104-106 ms against
127-131 ms with the software flush (both with descending channels, numba_cpu's "Backward order").

Use, in a kernel's prange body (the MXCSR is per thread, so each job sets and restores it):
    state = denormals_off()
    ...rows writing flush_if_soft(value)...
    denormals_restore(state)
`flush_if_soft(x)` is the identity where the hardware flushes (the job turned FTZ on) and
numba_math.flush_subnormal elsewhere (other architectures: the same results, in software). With FTZ
every subnormal intermediate result is zero as well; the difference from flushing only the stored
values is below float32's smallest normal number (1.2e-38) in absolute terms.
Not DAZ (subnormal inputs read as zero): it changes results where a function's derivative jumps at 0,
e.g. g'(v) = 1/4 for v = -3.6e-41 but 1 at v = 0 (log-space minGRU; a hypothesis draw found it).
Inputs are the caller's; only subnormals this kernel would create are flushed, as in software.

The state is restored at the end of each job, so the caller's thread (Python, NumPy, BLAS) never sees
the changed mode. LLVM does not move the loops' loads and stores across the two calls (they have side
effects), so all of a job's arithmetic runs in the flushed mode; tests/test_numba_math.py checks that
no subnormal leaves a backward and that the caller's mode is unchanged.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .numba_math import flush_subnormal

HARDWARE_FTZ = platform.machine().lower() in ("x86_64", "amd64")
_FTZ = np.uint32(0x8000)  # MXCSR bit 15: subnormal results become zero (bit 6, DAZ, is left alone)


@intrinsic
def get_mxcsr(typingctx):
    """The calling thread's MXCSR (x86-64 only)."""
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [slot.type]),
                                            "llvm.x86.sse.stmxcsr")
        builder.call(fn, [slot])
        return builder.load(slot)
    return types.uint32(), codegen


@intrinsic
def set_mxcsr(typingctx, value):
    """Load the low 32 bits of integer `value` into the calling thread's MXCSR (x86-64 only)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        v = args[0]
        if v.type.width > 32:  # numba widens uint32 | uint32 to 64 bits; MXCSR is 32
            v = builder.trunc(v, ir.IntType(32))
        builder.store(v, slot)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [slot.type]),
                                            "llvm.x86.sse.ldmxcsr")
        builder.call(fn, [slot])
        return context.get_dummy_value()
    return types.void(value), codegen


def denormals_off():
    """Turn on FTZ for this thread; returns the state for `denormals_restore` (numba only)."""
    raise NotImplementedError("numba-only")


def denormals_restore(state):
    """Put back the state returned by `denormals_off` (numba only)."""
    raise NotImplementedError("numba-only")


def flush_if_soft(x):
    """x where the hardware flushes (inside denormals_off), else flush_subnormal(x) (numba only)."""
    raise NotImplementedError("numba-only")


@overload(denormals_off)
def _ov_off():
    if HARDWARE_FTZ:
        def impl():
            state = get_mxcsr()
            set_mxcsr(state | _FTZ)
            return state
    else:
        def impl():
            return np.uint32(0)
    return impl


@overload(denormals_restore)
def _ov_restore(state):
    if HARDWARE_FTZ:
        return lambda state: set_mxcsr(state)
    return lambda state: None


@overload(flush_if_soft)
def _ov_flush(x):
    if not isinstance(x, types.Float):
        return None
    if HARDWARE_FTZ:
        return lambda x: x
    return lambda x: flush_subnormal(x)
