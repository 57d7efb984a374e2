"""Recycled output memory for the CPU kernels: a large result reuses the memory of an earlier result
that nothing references any more (the CPU counterpart of CuPy's memory pool).

Why: NumPy takes an array above a few MiB straight from the operating system (mmap) and gives it
back when the array dies (munmap), so every allocating call writes its outputs into fresh pages. The
first write to each page faults, and the kernel zeroes the page (for NumPy's transparent huge pages it
may first compact memory to find 2 MiB). min_gru + min_gru_backward at (64, 4096, 256) float32 moves
its outputs at memory speed in ~0.35 s of user CPU time, and the page handling for those 0.8 GB of
fresh outputs added 0.2 s to 2.3 s of system time per call (2-core development VM, getrusage around
one call; `python benchmarks/torch_adapter.py` prints the same split). A preallocated `out=` costs
none of it; this pool gives the allocating calls the same.

How: a block is a page-aligned 1-D uint8 array of a size rounded up to 2 MiB; a result is a view of
one. Blocks are never handed back: a block is free again when the pool's own reference is the only
one left (`sys.getrefcount`), since the result, every view of it, and a torch tensor or DLPack
capsule made from it all keep a reference to the block. A request takes a free block of its size
class, else a new one. Free blocks beyond `limit` bytes are released oldest first, so the pool holds
at most `limit` bytes that nothing uses (default: 1/8 of the machine's memory, at most 2 GiB;
`MINCORE_CPU_POOL_LIMIT` in bytes, or `set_limit`; 0 turns the pool off). Results below `MIN_BYTES`
come from np.empty: the C allocator reuses small blocks without new pages.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

MIN_BYTES = 4 << 20  # smaller results: np.empty (malloc's own free lists serve them)
CLASS = 2 << 20  # size classes: multiples of one transparent huge page
ALIGN = 4096


def _default_limit() -> int:
    env = os.environ.get("MINCORE_CPU_POOL_LIMIT")
    if env is not None:
        try:
            return max(0, int(env))
        except ValueError:
            raise ValueError(f"MINCORE_CPU_POOL_LIMIT: expected a number of bytes (0 turns the pool off), "
                             f"got {env!r}") from None
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 << 30
    return min(2 << 30, ram // 8)


class CpuMemoryPool:
    """Output blocks for the numba engine's results; see the module docstring."""

    def __init__(self, limit: int | None = None):
        self._blocks: list[tuple[np.ndarray, int, int]] = []  # (owning array, aligned offset, bytes), oldest first
        self._lock = threading.Lock()
        self._limit = _default_limit() if limit is None else int(limit)
        self._blocks.append((np.empty(0, np.uint8), 0, 0))
        self._idle = sys.getrefcount(self._blocks[0][0])  # the count while only the pool refers to it
        self._blocks.clear()

    def _free(self, block) -> bool:
        return sys.getrefcount(block[0]) == self._idle  # measured as the baseline was: through the tuple

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array, from a free block when one fits."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n < MIN_BYTES or self._limit <= 0:
            return np.empty(shape, dtype)
        size = -(-n // CLASS) * CLASS
        with self._lock:
            block = next((b for b in self._blocks if b[2] == size and self._free(b)), None)
            if block is None:
                raw = np.empty(size + ALIGN, np.uint8)
                block = (raw, -raw.ctypes.data % ALIGN, size)
                del raw
                self._trim()  # before the new block joins: it is free until returned
                self._blocks.append(block)
            raw, start, _ = block
            return raw[start:start + n].view(dtype).reshape(shape)

    def empty_like(self, x: np.ndarray) -> np.ndarray:
        return self.empty(x.shape, x.dtype)

    def _trim(self, limit: int | None = None) -> None:
        """Release free blocks, oldest first, while the free ones exceed `limit` (default: the pool's)."""
        excess = sum(b[2] for b in self._blocks if self._free(b)) - (self._limit if limit is None else limit)
        kept = []
        for b in self._blocks:
            if excess > 0 and self._free(b):
                excess -= b[2]
            else:
                kept.append(b)
        self._blocks = kept

    def set_limit(self, size: int) -> None:
        """Hold at most `size` bytes of free blocks (0: no pooling; free blocks are released now)."""
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size: expected a number of bytes >= 0, got {size!r}")
        with self._lock:
            self._limit = int(size)
            self._trim()

    def get_limit(self) -> int:
        return self._limit

    def free_all_blocks(self) -> None:
        """Release every free block (blocks still referenced stay until their results die)."""
        with self._lock:
            self._trim(0)

    def used_bytes(self) -> int:
        """Bytes of the blocks that some result still references."""
        with self._lock:
            return sum(b[2] for b in self._blocks if not self._free(b))

    def total_bytes(self) -> int:
        """Bytes of every block the pool holds (used and free)."""
        with self._lock:
            return sum(b[2] for b in self._blocks)


POOL = CpuMemoryPool()
empty, empty_like = POOL.empty, POOL.empty_like


def cpu_memory_pool() -> CpuMemoryPool:
    """The pool the numba engine takes its large results from (as cupy.get_default_memory_pool()):
    `free_all_blocks()`, `set_limit(bytes)`, `used_bytes()`, `total_bytes()`."""
    return POOL
