"""Data parallelism over MPI (mpi4py), with NCCL between GPUs: one rank = one process = one device.

`world()` is the process's World. Launched by `mpiexec -n N` / `srun` with N > 1 ranks (the launcher's
environment says so: `launched_ranks`), it is an MpiWorld over MPI.COMM_WORLD; otherwise it is
Solo, whose every collective is the identity and which never imports mpi4py. The training loop
(mincore.tasks.loop) asks it for rank and size, broadcasts rank 0's state, averages gradients with
mincore.autograd.allreduce and agrees on metrics and stops; tasks shard their evaluation with
`split` and `sum`. docs/DISTRIBUTED.md has the design and the measurements.

Every MPI collective is non-blocking, polled against a deadline (`timeout`, $MINCORE_RANK_TIMEOUT):
a rank that died or hangs makes the others raise RankTimeout instead of waiting for ever.

Gradients travel in a few flat buckets per dtype (`bucket_layout`), summed and scaled by 1 / size:
NumPy arrays through MPI (mpi4py's buffer interface); CuPy arrays through NCCL (`cupy.cuda.nccl`,
its communicator set up over MPI), or through MPI when the user says it is CUDA-aware
(`choose_allreduce` is the rule).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time

import numpy as np

__all__ = ["world", "launched_ranks", "Solo", "MpiWorld", "RankTimeout", "on_every_rank", "choose_allreduce",
           "device_for_rank", "bucket_layout", "ALLREDUCE", "BUCKET_BYTES"]

# the ranks' count as each launcher exports it: MPICH / Intel MPI (Hydra, PMI), Open MPI, MVAPICH, Slurm's srun
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
ALLREDUCE = ("auto", "mpi", "nccl")
BUCKET_BYTES = 8 << 20  # a few buckets for the paper's models; each one all-reduce
TIMEOUT = 600.0  # seconds a collective waits: longer than rank 0's checkpoint, plot or evaluation
_WORLD: list = []


class RankTimeout(RuntimeError):
    """A collective waited longer than the world's timeout: another rank died, hangs or is far slower."""

    on_every_rank = False


def on_every_rank(exc: BaseException) -> bool:
    """True when `exc` was raised on every rank alike (so every rank can exit on its own, no abort)."""
    return bool(getattr(exc, "on_every_rank", False))


def every_rank(exc: BaseException) -> BaseException:
    """`exc`, marked as raised on every rank alike (see on_every_rank)."""
    exc.on_every_rank = True
    return exc


def launched_ranks(environ=None) -> int:
    """How many ranks the launcher started (1 when none did), from its environment variables."""
    environ = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"${name} is {value!r}, expected the number of ranks (a positive integer)")
            return int(value)
    return 1


def world(*, allreduce: str | None = None, timeout: float | None = None):
    """The process's World, made on the first call: an MpiWorld when launched with more than one rank,
    else Solo. `allreduce` (auto | mpi | nccl) and `timeout` (seconds a collective waits), when given,
    set how it sums gradients and how long it waits; they start as $MINCORE_ALLREDUCE and
    $MINCORE_RANK_TIMEOUT, else auto and 600."""
    if not _WORLD:
        n = launched_ranks()
        w = MpiWorld(_mpi(n).COMM_WORLD) if n > 1 else Solo()
        raw = os.environ.get("MINCORE_RANK_TIMEOUT")
        try:
            t = float(raw) if raw else TIMEOUT
        except ValueError:
            raise ValueError(f"$MINCORE_RANK_TIMEOUT is {raw!r}, expected seconds (a positive number)") from None
        w.allreduce, w.timeout = _allreduce(os.environ.get("MINCORE_ALLREDUCE") or "auto"), _timeout(t)
        _WORLD.append(w)
    w = _WORLD[0]
    if allreduce is not None:
        w.allreduce = _allreduce(allreduce)
    if timeout is not None:
        w.timeout = _timeout(timeout)
    return w


def _allreduce(name: str) -> str:
    if name not in ALLREDUCE:
        raise ValueError(f"allreduce must be one of {', '.join(ALLREDUCE)}, got {name!r}")
    return name


def _timeout(seconds: float) -> float:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"the rank timeout must be a positive number of seconds, got {seconds}")
    return float(seconds)


def _mpi(n: int):
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ValueError(f"launched as {n} MPI ranks, but mpi4py cannot be imported ({e}); install it with "
                         f"pip install 'mincore[mpi]' (or start one process without mpiexec)") from None
    return MPI


class Solo:
    """The world of a process started alone: rank 0 of 1; every collective returns its input."""

    rank, size, local_rank, local_size, root = 0, 1, 0, 1, True
    allreduce, timeout = "auto", TIMEOUT

    def split(self, items):
        return items

    def sum(self, values, what: str = "sum") -> list:
        return list(values)

    def max(self, values, what: str = "max") -> list:
        return list(values)

    def bcast(self, obj):
        return obj

    def on_root(self, fn):
        return fn()

    def use_device(self, xp) -> None:
        pass

    def abort(self, code: int = 1):
        raise SystemExit(code)


class MpiWorld(Solo):
    """Rank `rank` of `size` over an MPI communicator; rank 0 is the root."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine: one device each
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.root = self.rank == 0

    def wait(self, request, what: str) -> None:
        """Complete `request` (poll_until); RankTimeout after `timeout` seconds."""
        if not poll_until(request.Test, self.timeout):
            raise RankTimeout(f"rank {self.rank} of {self.size}: the {what} waited {self.timeout:g} s for the other "
                              f"ranks (one died, hangs or is far slower; $MINCORE_RANK_TIMEOUT or --rank-timeout "
                              f"sets the wait)")

    def _reduce(self, values, op, what) -> list:
        buf = np.array(values, dtype=np.float64).reshape(-1)
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=op), what)
        return buf.tolist()

    def split(self, items):
        """This rank's share of `items` (every size-th, from its rank): balanced when the last is short."""
        return items[self.rank::self.size]

    def sum(self, values, what: str = "sum") -> list:
        """The element-wise sum over the ranks (as float64; integers below 2**53 stay exact); `what`
        names it in a RankTimeout."""
        return self._reduce(values, self.MPI.SUM, what)

    def max(self, values, what: str = "max") -> list:
        return self._reduce(values, self.MPI.MAX, what)

    def bcast(self, obj):
        """Rank 0's `obj` on every rank (pickled; its size first, then its bytes)."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.root else b""
        n = np.array([len(data)], dtype=np.int64)
        self.wait(self.comm.Ibcast(n, root=0), "broadcast")
        buf = np.frombuffer(data, np.uint8).copy() if self.root else np.empty(int(n[0]), np.uint8)
        self.wait(self.comm.Ibcast(buf, root=0), "broadcast")
        return obj if self.root else pickle.loads(buf.tobytes())

    def on_root(self, fn):
        """fn() run on rank 0 alone, its result on every rank; an exception it raises is raised on
        every rank (rank 0's own; elsewhere the same type when it pickles, else a RuntimeError)."""
        out, err = None, None
        if self.root:
            try:
                out = ("ok", fn())
            except Exception as e:
                err = e
                try:
                    out = ("error", pickle.loads(pickle.dumps(e)))
                except Exception:
                    out = ("error", RuntimeError(f"rank 0: {type(e).__name__}: {e}"))
        kind, value = self.bcast(out)
        if kind == "error":
            raise every_rank(err if self.root else value)
        return value

    def use_device(self, xp) -> None:
        """One device per rank: the `local_rank`-th visible GPU when `xp` is CuPy (device_for_rank)."""
        if xp is np:
            return
        n = xp.cuda.runtime.getDeviceCount()
        xp.cuda.Device(device_for_rank(self.local_rank, self.local_size, n)).use()

    def abort(self, code: int = 1):
        """Stop every rank of the job now (MPI_Abort): for an error the other ranks cannot see."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


SPIN = 0.01  # seconds poll_until asks without sleeping


def poll_until(done, timeout: float) -> bool:
    """Call done() until it returns True (then True) or `timeout` seconds pass (then False): without
    pause for the first SPIN seconds (a sleep costs a small all-reduce ~0.7 ms of latency, measured),
    then with sleeps doubling to 1 ms, so that a rank waiting for a slower one leaves it the core."""
    start = time.monotonic()
    pause = 0.0
    while not done():
        now = time.monotonic()
        if now - start > timeout:
            return False
        if now - start > SPIN:
            time.sleep(pause)
            pause = min(1e-3, 2 * pause or 2e-5)
    return True


def device_for_rank(local_rank: int, local_size: int, devices: int) -> int:
    """The GPU of a rank: its rank on the machine when each rank sees them all; the one device it sees
    when the scheduler gave each rank its own (CUDA_VISIBLE_DEVICES); else a ValueError."""
    if devices >= local_size:
        return local_rank
    if devices == 1:
        return 0
    raise ValueError(f"{local_size} ranks on this machine and {devices} GPUs visible to each: start one rank per "
                     f"GPU (mpiexec -n {devices} per machine) or give each rank its own (CUDA_VISIBLE_DEVICES)")


def choose_allreduce(array_module: str, requested: str, *, nccl_available: bool) -> str:
    """How gradients of arrays of `array_module` ("numpy" or "cupy") are summed: "mpi" or "nccl".
    auto: MPI for NumPy, NCCL for CuPy. mpi with CuPy hands device pointers to MPI, which only a
    CUDA-aware MPI takes (MPI cannot be asked portably, so the user says so). No silent fallback."""
    _allreduce(requested)
    if array_module == "numpy":
        if requested == "nccl":
            raise ValueError("allreduce nccl sums CuPy arrays on GPUs, and this run's arrays are NumPy (a CPU "
                             "engine); use allreduce mpi (or auto)")
        return "mpi"
    if requested == "mpi":
        return "mpi"
    if not nccl_available:
        raise ValueError("this run's arrays are CuPy, whose gradients are summed with NCCL, and this CuPy has no "
                         "NCCL (cupy.cuda.nccl.available is False): install it (pip install nvidia-nccl-cu12 or "
                         "-cu13, as your CuPy), or, with a CUDA-aware MPI, choose allreduce mpi")
    return "nccl"


def bucket_layout(sizes, dtypes, cap_bytes: int = BUCKET_BYTES) -> list[tuple]:
    """Flat buckets for arrays of `sizes` elements and `dtypes`, in order: [(dtype, [(index, offset,
    size), ...], total elements)]. One dtype per bucket; a bucket is closed when the next array would
    take it past cap_bytes (an array larger than that gets a bucket of its own)."""
    if cap_bytes < 1:
        raise ValueError(f"cap_bytes must be >= 1, got {cap_bytes}")
    buckets, open_ = [], {}
    for i, (n, dt) in enumerate(zip(sizes, dtypes, strict=True)):
        dt = np.dtype(dt)
        b = open_.get(dt)
        if b is None or (b[2] and (b[2] + n) * dt.itemsize > cap_bytes):
            b = open_[dt] = [dt, [], 0]
            buckets.append(b)
        b[1].append((i, b[2], int(n)))
        b[2] += int(n)
    return [tuple(b) for b in buckets]
