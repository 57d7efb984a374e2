"""Non-temporal ("streaming") stores for the numba kernels' outputs, and a software prefetch.

Why: an ordinary store first reads the cache line it writes (read for ownership), so a kernel that
reads 2 arrays and writes 1 moves 4 arrays' worth of bytes through memory, and a copy moves 3 for
every 2 it counts. A non-temporal store writes whole lines straight to memory without that read.
np.copyto (glibc) does so for large copies; a numba loop cannot, because LLVM refuses to vectorise a
loop whose stores carry the !nontemporal hint unless they are aligned to the vector's size, which
numba cannot promise. Measured on the 2-core development VM, (64, 4096, 256) float32, same run: a
numba prange copy 14 GB/s, np.copyto 24.5 GB/s, the same numba copy through `store_row` 24.6 GB/s;
a scan without gate math (h = a h + b, 3 values per element) 0.64 of np.copyto with ordinary stores,
0.88 with these.

How: a kernel computes each row of an output into a small buffer (L1-resident, reused every row)
and hands it to `store_row`, which writes the row's elements up to the first 64-byte boundary and
after the last one with scalar non-temporal stores (movnti of the element's bits) and everything in
between as whole 64-byte lines (one vector store each, aligned by construction). Scalar edges matter:
an ordinary store to a line that a non-temporal store also writes pulls the line into the cache and
makes the non-temporal store evict it (a first version with ordinary edge stores ran slower than no
streaming at all). Each job ends with `fence()`, since non-temporal stores are weakly ordered.

`prefetch(arr, i)` is llvm.prefetch of arr[i]'s line (`prefetch_row`: every line of a row), for
kernels whose reads the hardware prefetchers do not keep up with (the LRU backward: numba_scan; the
minGRU and minLSTM forwards: numba_cpu).

`wide_vectors()` asks LLVM for 512-bit vectors in the calling function, and `line_buffer` (with
`line_zeros`, `line_copy`) gives row buffers that start on a cache line, so that those vectors
never straddle two.

When: only for a call whose outputs exceed half the last-level cache (and 32 MiB): `streams`.
Streamed results are not in the cache afterwards, which is right for arrays far larger than it and
wrong for ones that the next operation could read from it (a training step's activations), so the
threshold errs towards plain stores. The cache is the OS's figure for the whole chip; a VM may get
only part of it, so on such machines outputs somewhat below the threshold are memory-bound too.
"""

from __future__ import annotations

import glob
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

U = np.uint64
LINE = 64  # bytes: one cache line, one 512-bit store
# x86-64 has movnti / movntps; elsewhere the hint is still legal LLVM, but untested, so off
STREAMING = platform.machine().lower() in ("x86_64", "amd64")
MIN_STREAM_BYTES = 32 * 2**20


def last_level_cache() -> int:
    """Bytes of the largest CPU cache the OS reports (Linux sysfs), else 0."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            continue
    return max(sizes, default=0)


STREAM_BYTES = max(MIN_STREAM_BYTES, last_level_cache() // 2)  # a call's outputs above this are streamed


def streams(*outputs) -> bool:
    """True when the kernel should stream `outputs` (arrays) to memory."""
    return STREAMING and sum(o.nbytes for o in outputs) > STREAM_BYTES


def _pointer(context, builder, aryty, ary, index):
    arr = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, arr, [index], wraparound=False)


def _nontemporal(builder, store):
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def address(typingctx, arr, i):
    """The address of arr[i] as an integer (arr 1-D, C-contiguous)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_pointer(context, builder, sig.args[0], args[0], args[1]), ir.IntType(64))
    return types.uint64(arr, i), codegen


def _same(dst, src):
    return isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype


@intrinsic
def stream_line(typingctx, dst, i, src, j):
    """dst[i:] = src[j:] for one 64-byte line with a non-temporal store; &dst[i] must be 64-byte
    aligned (store_row guarantees it); src is read unaligned."""
    if not _same(dst, src):
        return None

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(64), LINE // 8)
        s = builder.bitcast(_pointer(context, builder, sig.args[2], args[2], args[3]), vec.as_pointer())
        d = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1]), vec.as_pointer())
        _nontemporal(builder, builder.store(builder.load(s, align=4), d, align=LINE))
        return context.get_dummy_value()
    return types.void(dst, i, src, j), codegen


@intrinsic
def stream_one(typingctx, dst, i, src, j):
    """dst[i] = src[j] with a non-temporal store of the element's bits (movnti)."""
    if not _same(dst, src):
        return None

    def codegen(context, builder, sig, args):
        size = context.get_abi_sizeof(context.get_data_type(sig.args[0].dtype))
        it = ir.IntType(8 * size)
        s = builder.bitcast(_pointer(context, builder, sig.args[2], args[2], args[3]), it.as_pointer())
        d = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1]), it.as_pointer())
        _nontemporal(builder, builder.store(builder.load(s, align=size), d, align=size))
        return context.get_dummy_value()
    return types.void(dst, i, src, j), codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """A hint to bring the cache line of arr[i] into the cache (llvm.prefetch: read, keep, data)."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        p = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1]), i8p)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, i), codegen


@njit
def prefetch_row(arr, o, n):
    """prefetch() every cache line of arr[o:o + n] (arr flat, o unsigned), the partial ones at both
    ends included."""
    step = LINE // arr.itemsize
    for j in range(0, n + step - 1, step):
        prefetch(arr, o + U(j))


@intrinsic
def fence(typingctx):
    """A full memory fence: the job's non-temporal stores are visible before it reports done."""
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def wide_vectors(typingctx):
    """Marks the calling function for 512-bit vectors where the CPU has them (AVX-512).

    LLVM's x86 tuning prefers 256-bit vectors on most AVX-512 cores (a 512-bit instruction lowers
    the clock of early ones), so numba's loops use half the register width. The gate math of the
    minGRU / minLSTM rows is instruction-bound (an exp costs ~20 vector instructions), and
    the wider vectors do it in fewer: the function attribute "prefer-vector-width"="512" asks for
    them for this function only. On CPUs without AVX-512 the attribute changes nothing."""
    def codegen(context, builder, sig, args):
        # a string attribute, which llvmlite's FunctionAttributes does not list: added to the set
        # itself (it prints its members verbatim); a hint, so an llvmlite without that set loses
        # only the speed (tests/test_numba_stream.py checks that the attribute arrives)
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:
            pass
        return context.get_dummy_value()
    return types.void(), codegen


@njit
def line_buffer(n, dtype):
    """An empty row buffer of n elements starting on a cache line (64 bytes): its vector stores and
    store_row's 64-byte line loads then never straddle two lines."""
    raw = np.empty(n + LINE, dtype=dtype)
    skip = np.int64(((U(LINE) - (address(raw, 0) & U(LINE - 1))) & U(LINE - 1)) // U(raw.itemsize))
    return raw[skip:skip + n]


@njit
def line_zeros(n, dtype):
    """line_buffer(n, dtype) filled with zeros."""
    buf = line_buffer(n, dtype)
    buf[:] = 0
    return buf


@njit
def line_copy(src):
    """A copy of the 1-D array src in a line_buffer."""
    buf = line_buffer(src.size, src.dtype)
    buf[:] = src
    return buf


@njit(fastmath={"contract"}, error_model="numpy")
def store_row(dst, o, buf, n, stream):
    """dst[o:o + n] = buf[:n] (dst flat, o unsigned): non-temporal when `stream`, else plain stores."""
    if not stream:
        for j in range(n):
            dst[o + U(j)] = buf[j]
        return
    size = U(dst.itemsize)
    offset = address(dst, o) & U(LINE - 1)
    if offset % size != U(0):  # an element straddles the line grid: no aligned line store exists
        for j in range(n):
            dst[o + U(j)] = buf[j]
        return
    head = min(n, np.int64(((U(LINE) - offset) & U(LINE - 1)) // size))
    for j in range(head):
        stream_one(dst, o + U(j), buf, j)
    per_line = LINE // dst.itemsize
    j = head
    while j + per_line <= n:
        stream_line(dst, o + U(j), buf, j)
        j += per_line
    for jj in range(j, n):
        stream_one(dst, o + U(jj), buf, jj)
