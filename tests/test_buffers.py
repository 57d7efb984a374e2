"""The CPU kernels' memory pool (mincore.kernels.buffers): a block is handed out again only once
nothing references a result made from it (the result, a view, a torch tensor, a DLPack capsule),
free blocks beyond the limit are released, and results from recycled blocks equal the oracle's."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

import mincore
from mincore.kernels import reference
from mincore.kernels.buffers import CLASS, MIN_BYTES, CpuMemoryPool

BIG = (MIN_BYTES // 4 + 1,)  # float32 elements just above the pooled size: one 6 MiB size class


def test_a_free_block_is_reused_and_a_referenced_one_is_not():
    pool = CpuMemoryPool(limit=1 << 30)
    a = pool.empty(BIG, np.float32)
    b = pool.empty(BIG, np.float32)
    assert not np.shares_memory(a, b) and pool.total_bytes() == 2 * 3 * CLASS
    addr = a.ctypes.data
    del a
    c = pool.empty(BIG, np.float32)
    assert c.ctypes.data == addr and pool.total_bytes() == 2 * 3 * CLASS  # a's block, no new one
    assert c.flags.c_contiguous and c.flags.writeable and c.ctypes.data % 4096 == 0


def made_from(a, keep):
    if keep == "view":
        return a[1:]
    if keep == "reshaped":
        return a.reshape(-1, 1)
    if keep == "memoryview":
        return memoryview(a)
    if keep == "dlpack":
        return a.__dlpack__()
    return a.view(np.int32)


@pytest.mark.parametrize("keep", ["view", "reshaped", "memoryview", "dlpack", "dtype view"])
def test_anything_made_from_a_result_keeps_its_block(keep):
    pool = CpuMemoryPool(limit=1 << 30)
    a = pool.empty(BIG, np.float32)
    a[:] = 7.0
    addr = a.ctypes.data
    held = made_from(a, keep)
    del a
    for _ in range(3):  # none of these may take the held block (each reuses the one before it)
        b = pool.empty(BIG, np.float32)
        assert b.ctypes.data != addr
        b[:] = -1.0
        del b
    assert pool.total_bytes() == 2 * 3 * CLASS and pool.used_bytes() == 3 * CLASS
    if keep != "dlpack":
        assert float(np.asarray(held).ravel()[-1]) == (7.0 if keep != "dtype view" else np.float32(7).view(np.int32))
    del held
    assert pool.used_bytes() == 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_a_torch_tensor_made_from_a_result_keeps_its_block():
    import torch

    pool = CpuMemoryPool(limit=1 << 30)
    a = pool.empty(BIG, np.float32)
    a[:] = 3.0
    t = torch.from_numpy(a)
    del a
    b = pool.empty(BIG, np.float32)
    b[:] = 0.0
    assert bool((t == 3.0).all())
    del t, b
    assert pool.used_bytes() == 0


def test_small_results_and_a_zero_limit_bypass_the_pool():
    pool = CpuMemoryPool(limit=1 << 30)
    pool.empty((16,), np.float64)
    assert pool.total_bytes() == 0
    off = CpuMemoryPool(limit=0)
    off.empty(BIG, np.float32)
    assert off.total_bytes() == 0


def test_free_blocks_beyond_the_limit_are_released_oldest_first():
    pool = CpuMemoryPool(limit=2 * 3 * CLASS)  # room for two free 6 MiB blocks
    held = [pool.empty(BIG, np.float32) for _ in range(4)]
    assert pool.total_bytes() == 4 * 3 * CLASS  # used blocks are never released
    held.clear()
    pool.empty((2 * MIN_BYTES,), np.uint8)  # a new size class: trimming runs
    assert pool.total_bytes() == 2 * 3 * CLASS + 4 * CLASS
    pool.free_all_blocks()
    assert pool.total_bytes() == 0
    with pytest.raises(ValueError, match=r"size: expected a number of bytes >= 0, got -1"):
        pool.set_limit(-1)


def test_threads_never_get_the_same_block():
    pool, got, lock = CpuMemoryPool(limit=1 << 30), [], threading.Lock()

    def take():
        for _ in range(20):
            a = pool.empty(BIG, np.float32)
            with lock:
                got.append(a)
    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addrs = [a.ctypes.data for a in got]
    assert len(set(addrs)) == len(addrs) == 80


def test_recycled_results_equal_the_oracle_call_after_call():
    """Allocating kernel calls whose outputs come from recycled blocks: each result is the float64
    oracle's, and a result kept from an earlier call is never overwritten by a later one."""
    rng = np.random.default_rng(0)
    shape = (4, 600, 512)  # 4.7 MiB per float32 output: pooled
    kept = []
    for i in range(4):
        k, v, dh = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
        h = mincore.min_gru(k, v, engine="numba")
        dk, dv, _ = mincore.min_gru_backward(k, v, h, dh, engine="numba")
        want = reference.min_gru(k.astype(np.float64), v.astype(np.float64), np.zeros((4, 512)), False)
        np.testing.assert_allclose(h, want, rtol=2e-4, atol=2e-5)
        kept.append((h.copy(), h)) if i == 0 else None
        del dk, dv
    first_copy, first = kept[0]
    np.testing.assert_array_equal(first, first_copy)
    assert mincore.cpu_memory_pool().used_bytes() >= first.nbytes
