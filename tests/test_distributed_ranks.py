"""The collectives of mincore.autograd.distributed and the gradient all-reduce, run on every rank:

    mpiexec -n 2 python -m pytest -q -p no:cacheprovider tests/test_distributed_ranks.py

(CI runs that line; tests/test_distributed_mpi.py launches it too.) Each rank computes every rank's
inputs from their seeds, so it checks its own result against NumPy. Every test makes the same
collectives on every rank, in the same order, so one failing assertion leaves the others in step.
In a single process the module is skipped: there is nothing to reduce over.
"""

from __future__ import annotations

import numpy as np
import pytest

from mincore.autograd import Parameter
from mincore.autograd.distributed import MpiWorld, on_every_rank, world

W = world(timeout=60)
pytestmark = pytest.mark.skipif(W.size == 1, reason="runs on each rank under mpiexec -n 2 "
                                                   "(tests/test_distributed_mpi.py launches it)")


def grads_of(rank: int, shapes, dtype, missing=()):
    """Rank `rank`'s gradients: seeded by the rank, None for the indices in `missing`."""
    rng = np.random.default_rng(1000 + rank)
    return [None if i in missing else (rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3)).astype(dtype)
            for i, s in enumerate(shapes)]


def test_the_world_is_mpi():
    assert isinstance(W, MpiWorld) and 0 <= W.rank < W.size and W.root == (W.rank == 0)
    assert 1 <= W.local_size <= W.size and 0 <= W.local_rank < W.local_size


def test_sum_max_split_bcast():
    assert W.sum([W.rank, 1.5, 2**52]) == [W.size * (W.size - 1) / 2, 1.5 * W.size, W.size * 2**52]
    assert W.max([W.rank, -W.rank]) == [W.size - 1, 0]
    items = list(range(11))
    mine = W.split(items)
    assert mine == items[W.rank::W.size]
    assert W.bcast(mine) == items[0::W.size]  # rank 0's share, on every rank
    assert W.bcast({"a": np.arange(3), "rank": W.rank} if W.root else None)["rank"] == 0


def test_on_root_result_and_error():
    def refuse():
        raise FileExistsError(f"rank {W.rank} refused")

    assert W.on_root(lambda: f"rank {W.rank}") == "rank 0"
    with pytest.raises(FileExistsError, match="rank 0 refused") as e:  # rank 0's error, raised on every rank
        W.on_root(refuse)
    assert on_every_rank(e.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cap", [1, 200, 1 << 20])  # one parameter per bucket; uneven buckets; one bucket
def test_gradient_all_reduce_means_against_numpy(dtype, cap):
    from mincore.autograd.allreduce import GradientAllReduce

    shapes = [(3, 5), (7,), (40,), (2, 2, 2), (1,), (13, 3)]
    params = [Parameter(np.zeros(s, dtype)) for s in shapes]
    for p, g in zip(params, grads_of(W.rank, shapes, dtype), strict=True):
        p.grad = g
    reduce = GradientAllReduce(W, params, np, cap_bytes=cap)
    sizes = [total for _, _, total in reduce.layout]
    if cap == 200:
        assert len(sizes) > 2 and len(set(sizes)) > 1, sizes  # uneven buckets
    reduce()
    every = [grads_of(r, shapes, dtype) for r in range(W.size)]
    for i, p in enumerate(params):
        want = sum(g[i] for g in every) * dtype(1.0 / W.size)  # rank order; with 2 ranks the same rounding
        assert p.grad.dtype == dtype and p.grad.shape == shapes[i]
        if W.size == 2:
            np.testing.assert_array_equal(p.grad, want)
        else:
            np.testing.assert_allclose(p.grad, want, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_mixed_dtypes_and_missing_gradients():
    from mincore.autograd.allreduce import GradientAllReduce

    shapes = [(4,), (6,), (5,), (3,)]
    dtypes = [np.float32, np.float64, np.float32, np.float64]
    params = [Parameter(np.zeros(s, d)) for s, d in zip(shapes, dtypes, strict=True)]
    mine = [grads_of(W.rank, [s], d)[0] for s, d in zip(shapes, dtypes, strict=True)]
    mine[1] = None  # no rank has a gradient for parameter 1
    if W.rank != 0:
        mine[2] = None  # rank 0 alone has one for parameter 2: the others count as zeros
    for p, g in zip(params, mine, strict=True):
        p.grad = g
    reduce = GradientAllReduce(W, params, np, cap_bytes=1 << 20)
    assert [dt for dt, _, _ in reduce.layout] == [np.dtype(np.float32), np.dtype(np.float64)]
    reduce()
    assert params[1].grad is None
    root = grads_of(0, [shapes[2]], np.float32)[0]
    np.testing.assert_array_equal(params[2].grad, root * np.float32(1.0 / W.size))
    for i in (0, 3):
        want = sum(grads_of(r, [shapes[i]], dtypes[i])[0] for r in range(W.size)) * dtypes[i](1.0 / W.size)
        np.testing.assert_allclose(params[i].grad, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_mpi_sum_against_numpy(dtype):
    from mincore.autograd.allreduce import MpiSum

    buf = (np.arange(1000) * (W.rank + 1)).astype(dtype)
    MpiSum(W)(buf, "test sum")
    np.testing.assert_array_equal(buf, (np.arange(1000) * (W.size * (W.size + 1) // 2)).astype(dtype))


@pytest.mark.parametrize("landing", ["before", "after"])
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, monkeypatch, landing):
    """SIGTERM on rank 1 alone, landing just before or just after the step's agreed sum: every rank
    stops after one and the same step (the step of the sum that saw it), none waits in an all-reduce
    for a rank that has left the loop."""
    import os
    import signal

    from mincore.tasks import copy as C
    from mincore.tasks import dataparallel, loop

    agree, calls = dataparallel.agree, [0]

    def agree_with_a_signal(world, sums, flag, signals):
        calls[0] += 1
        hit = W.rank == 1 and calls[0] == 3
        if hit and landing == "before":
            os.kill(os.getpid(), signal.SIGTERM)
        out = agree(world, sums, flag, signals)
        if hit and landing == "after":
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(dataparallel, "agree", agree_with_a_signal)
    cfg = C.config("default", seq_len=8, n_data=2, d_model=8, n_layers=2, batch_size=2, eval_size=4,
                   eval_batch=2, steps=8, eval_every=4, warmup=1)
    out = W.bcast(str(tmp_path))  # rank 0's folder: the one the run writes
    s = loop.train(C.CopyTask(cfg), cfg, out, task_name="copy", progress=False)
    want = 3 if landing == "before" else 4
    assert (s["status"], s["signal"], s["steps"]) == ("interrupted", "SIGTERM", want)
    assert W.sum([s["steps"]]) == [W.size * want]
