"""Non-temporal stores of the numba kernels (mincore/kernels/numba_simd.py): every kernel gives the
same bits streamed as written in place, for outputs at every alignment to the 64-byte line and rows
shorter than, equal to and longer than one line; `store_row` on its own; when streaming is chosen."""

from __future__ import annotations

import glob

import numpy as np
import pytest
from test_out import _inputs, calls

import mincore
from mincore.kernels import numba_simd


def misaligned_like(x, shift):
    """A C-contiguous array like x whose data starts `shift` elements past a 64-byte boundary."""
    n = x.size + 64
    raw = np.empty(n, dtype=x.dtype)
    start = (-raw.ctypes.data % 64) // x.itemsize + shift
    out = raw[start:start + x.size].reshape(x.shape)
    out.fill(np.nan)
    return out


def outs_like(got, shift):
    return tuple(misaligned_like(g, shift) for g in got) if isinstance(got, tuple) else misaligned_like(got, shift)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3, 7, 5), (2, 9, 16), (1, 6, 37), (5, 4, 40)])
@pytest.mark.parametrize("name", list(calls(_inputs(np.random.default_rng(0), (1, 1, 1), "float64"))))
def test_streamed_outputs_equal_the_in_place_ones(monkeypatch, name, shape, dtype):
    """STREAM_BYTES = 0 streams every output; the bits must equal the in-place path's."""
    fn, args, kw = calls(_inputs(np.random.default_rng(1), shape, dtype))[name]
    want = fn(*args, engine="numba", **kw)
    monkeypatch.setattr(numba_simd, "STREAM_BYTES", 0)
    assert numba_simd.streams(np.empty(1)) == numba_simd.STREAMING
    for shift in (0, 1, 3, 15 if dtype == "float32" else 7):
        out = outs_like(want, shift)
        got = fn(*args, engine="numba", out=out, **kw)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,),
                        strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} shift {shift}")


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
def test_store_row_writes_exactly_the_row_at_any_offset_and_length(dtype):
    rng = np.random.default_rng(2)
    buf = (rng.standard_normal(100) * (1 + 1j if "complex" in dtype else 1)).astype(dtype)
    for o in (0, 1, 2, 5, 16, 17):
        for n in (0, 1, 3, 15, 16, 17, 40, 83):
            for stream in (True, False):
                dst = np.zeros(200, dtype)
                numba_simd.store_row(dst, np.uint64(o), buf, n, stream)
                numba_simd.store_row(dst, np.uint64(0), buf, 0, stream)  # n = 0 writes nothing
                want = np.zeros(200, dtype)
                want[o:o + n] = buf[:n]
                np.testing.assert_array_equal(dst, want, err_msg=f"o {o} n {n} stream {stream}")


def test_store_row_on_elements_that_straddle_the_line_grid():
    """float32 elements at an address that is not a multiple of 4: no aligned line store exists, so
    the row is written with plain stores (and still exactly)."""
    raw = np.zeros(4 * 64 + 2, np.uint8)
    dst = np.frombuffer(raw.data, dtype=np.float32, count=64, offset=2)
    if dst.ctypes.data % 4 == 0:
        dst = np.frombuffer(raw.data, dtype=np.float32, count=64, offset=1)
    buf = np.arange(64, dtype=np.float32)
    numba_simd.store_row(dst, np.uint64(0), buf, 64, True)
    np.testing.assert_array_equal(dst, buf)


def test_streaming_is_chosen_for_large_outputs_only(monkeypatch):
    small, large = np.empty(1024, np.float32), np.empty(1, np.float32)
    monkeypatch.setattr(numba_simd, "STREAM_BYTES", 4096)
    assert not numba_simd.streams(small)
    assert numba_simd.streams(small, small, large) == numba_simd.STREAMING  # the call's outputs in all
    monkeypatch.setattr(numba_simd, "STREAMING", False)
    assert not numba_simd.streams(small, small, large)


def test_the_threshold_is_half_the_last_level_cache_and_at_least_32_mib():
    llc = numba_simd.last_level_cache()
    assert numba_simd.STREAM_BYTES == max(32 * 2**20, llc // 2)
    if glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        assert llc >= 2**20  # read from sysfs: every x86 or ARM server reports at least 1 MiB


def test_a_streamed_call_matches_the_oracle(monkeypatch):
    """minGRU forward and backward streamed (threshold lowered to 1 MiB; 2 MB outputs) against the
    float64 oracle."""
    monkeypatch.setattr(numba_simd, "STREAM_BYTES", 2**20)
    B, T, D = 2, 257, 1000
    rng = np.random.default_rng(3)
    k, v, dh = (rng.standard_normal((B, T, D)).astype(np.float32) for _ in range(3))
    h = mincore.min_gru(k, v)
    assert numba_simd.streams(h)
    up = [x.astype(np.float64) for x in (k, v, dh)]
    np.testing.assert_allclose(h, mincore.min_gru(*up[:2], engine="numpy"), rtol=1e-5, atol=1e-5)
    want = mincore.min_gru_backward(up[0], up[1], h.astype(np.float64), up[2], engine="numpy")
    for g, w in zip(mincore.min_gru_backward(k, v, h, dh), want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_wide_vectors_marks_the_calling_function():
    """The 512-bit hint reaches LLVM as the function attribute of the function that asks for it."""
    from numba import njit

    @njit
    def wide(x):
        numba_simd.wide_vectors()
        return x.sum()

    @njit
    def plain(x):
        return x.sum()

    x = np.ones(40, np.float32)
    assert wide(x) == plain(x) == 40
    ir = lambda f: "\n".join(f.inspect_llvm().values())  # noqa: E731
    assert '"prefer-vector-width"="512"' in ir(wide) and "prefer-vector-width" not in ir(plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_line_buffer_starts_on_a_cache_line_and_prefetch_row_reads_nothing_wrong(dtype):
    from numba import njit

    @njit
    def make(n, like):
        buf = numba_simd.line_buffer(n, like.dtype)
        numba_simd.prefetch_row(like, np.uint64(3), n)  # a hint only: any row of the array
        buf[:] = like[3:3 + n]
        return buf

    like = np.arange(100, dtype=dtype)
    for n in (1, 7, 16, 33, 90):
        buf = make(n, like)
        assert buf.ctypes.data % numba_simd.LINE == 0 and buf.size == n
        np.testing.assert_array_equal(buf, like[3:3 + n])
