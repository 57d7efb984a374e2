"""The gradient all-reduce of data-parallel training: after backward, every rank's gradients are
replaced by their mean over the ranks, in a few flat buckets (mincore.autograd.distributed).

A bucket is one preallocated flat array per group of parameters of one dtype (`bucket_layout`):
gradients are copied in (zeros where a rank has none), summed over the ranks in place, scaled by
1 / size, and handed back as views of the bucket. A parameter no rank has a gradient for keeps
None, as on one process (the optimizer then skips it). Transports (`choose_allreduce` picks):

    mpi   Iallreduce on the buffer (NumPy through mpi4py's buffer interface; CuPy arrays through
          their __cuda_array_interface__, which needs a CUDA-aware MPI), polled against the deadline
    nccl  ncclAllReduce on the current CuPy stream, communicator made from a unique id that rank 0
          broadcasts over MPI; completion polled through a CUDA event against the same deadline
"""

from __future__ import annotations

import numpy as np

from .distributed import BUCKET_BYTES, RankTimeout, bucket_layout, choose_allreduce, poll_until

__all__ = ["GradientAllReduce", "MpiSum", "NcclSum", "nccl_available"]


def nccl_available() -> bool:
    """Whether CuPy is installed with NCCL."""
    try:
        from cupy.cuda import nccl
    except ImportError:
        return False
    return bool(getattr(nccl, "available", True))


class MpiSum:
    """In-place sum over the ranks with MPI."""

    name = "mpi"

    def __init__(self, world):
        self.world = world

    def __call__(self, buf, what: str) -> None:
        if not isinstance(buf, np.ndarray):  # a device array: MPI reads it once the stream's work is done
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        w = self.world
        w.wait(w.comm.Iallreduce(w.MPI.IN_PLACE, buf, op=w.MPI.SUM), what)


class NcclSum:
    """In-place sum over the ranks with NCCL, on the current CuPy stream."""

    name = "nccl"

    def __init__(self, world):
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl, self.world = cupy, nccl, world
        uid = world.bcast(nccl.get_unique_id() if world.root else None)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.types = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def __call__(self, buf, what: str) -> None:
        if buf.dtype not in self.types:
            raise TypeError(f"NCCL all-reduce: gradients of dtype {buf.dtype}, expected float16, float32 or float64")
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self.types[buf.dtype], self.nccl.NCCL_SUM,
                            stream.ptr)
        done = self.cupy.cuda.Event(disable_timing=True)
        done.record(stream)
        if not poll_until(lambda: done.done, self.world.timeout):
            self.comm.abort()  # the kernel waits for a peer that is gone: free the device first
            raise RankTimeout(f"rank {self.world.rank} of {self.world.size}: the NCCL {what} waited "
                              f"{self.world.timeout:g} s for the other ranks (one died, hangs or is far slower)")


class GradientAllReduce:
    """Replaces the gradients of `params` by their mean over the ranks of `world` (call it after
    backward, before clipping); `xp` is the parameters' array module. `how`: "mpi" or "nccl"."""

    def __init__(self, world, params, xp, cap_bytes: int = BUCKET_BYTES):
        self.world, self.params = world, list(params)
        complex_ = sorted({str(p.data.dtype) for p in self.params if p.data.dtype.kind == "c"})
        if complex_:
            raise TypeError(f"gradient all-reduce: parameters of dtype {', '.join(complex_)}, expected real ones")
        self.how = choose_allreduce("numpy" if xp is np else "cupy", world.allreduce,
                                    nccl_available=xp is not np and nccl_available())
        self.sum = NcclSum(world) if self.how == "nccl" else MpiSum(world)
        self.layout = bucket_layout([p.data.size for p in self.params], [p.data.dtype for p in self.params],
                                    cap_bytes)
        self.buffers = [xp.empty(total, dtype=dt) for dt, _, total in self.layout]

    def __call__(self) -> None:
        params, w = self.params, self.world
        held = w.sum([p.grad is not None for p in params], "gradient all-reduce")  # ranks holding each gradient
        for k, ((dt, items, _), buf) in enumerate(zip(self.layout, self.buffers, strict=True)):
            for i, off, n in items:
                g = params[i].grad
                if g is None:
                    buf[off:off + n] = 0
                else:
                    buf[off:off + n] = g.reshape(-1)
            self.sum(buf, f"gradient all-reduce (bucket {k + 1} of {len(self.layout)})")
            buf *= dt.type(1.0 / w.size)
            for i, off, n in items:
                params[i].grad = buf[off:off + n].reshape(params[i].data.shape) if held[i] else None
