"""Data-parallel training in one process: the launcher's environment, the choice of transport and
device and their refusals, the bucket layout, the rows of a batch and of a dropout mask that a rank
takes, and that a plain process never loads mpi4py (tests/test_distributed_mpi.py runs the ranks)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mincore.autograd import distributed as D
from mincore.tasks import dataparallel as P


@pytest.mark.parametrize("env,n", [({}, 1), ({"PMI_SIZE": "2"}, 2), ({"OMPI_COMM_WORLD_SIZE": "4"}, 4),
                                   ({"SLURM_STEP_NUM_TASKS": "8"}, 8), ({"PMI_SIZE": "1"}, 1),
                                   ({"PMI_SIZE": "", "MV2_COMM_WORLD_SIZE": "3"}, 3)])
def test_launched_ranks(env, n):
    assert D.launched_ranks(env) == n


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_launched_ranks_refuses_nonsense(value):
    with pytest.raises(ValueError, match=rf"\$PMI_SIZE is '{value}', expected the number of ranks"):
        D.launched_ranks({"PMI_SIZE": value})


def _python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    clean = {k: v for k, v in os.environ.items() if k not in D.SIZE_VARIABLES}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
                          timeout=120)


def test_a_plain_process_is_solo_and_never_loads_mpi4py():
    r = _python("import sys, mincore, mincore.autograd, mincore.tasks.loop, mincore.tasks.copy, "
                "mincore.tasks.shakespeare, mincore.cli.train\n"
                "from mincore.autograd.distributed import world\n"
                "w = world()\n"
                "print(type(w).__name__, w.rank, w.size, 'mpi4py' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["Solo", "0", "1", "False"]


def test_launched_without_mpi4py_says_how_to_install_it():
    r = _python("import sys; sys.modules['mpi4py'] = None\n"
                "from mincore.autograd.distributed import world\nworld()", PMI_SIZE="2")
    assert r.returncode != 0
    assert "launched as 2 MPI ranks, but mpi4py cannot be imported" in r.stderr
    assert "pip install 'mincore[mpi]'" in r.stderr


def test_solo_collectives_are_the_identity():
    w = D.Solo()
    assert (w.rank, w.size, w.root) == (0, 1, True)
    items = range(5)
    assert w.split(items) is items
    assert w.sum([1, 2.5]) == [1, 2.5] and isinstance(w.sum([3])[0], int)
    assert w.bcast(w) is w and w.on_root(lambda: 7) == 7
    w.use_device(np)


@pytest.mark.parametrize("bad,match", [({"allreduce": "gloo"}, "allreduce must be one of auto, mpi, nccl"),
                                       ({"timeout": 0}, "rank timeout must be a positive number"),
                                       ({"timeout": float("inf")}, "rank timeout must be a positive number")])
def test_world_settings_are_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        D.world(**bad)


def test_world_settings_stay_until_changed():
    w = D.world(allreduce="mpi", timeout=12)
    try:
        assert D.world() is w and (w.allreduce, w.timeout) == ("mpi", 12)
    finally:
        D.world(allreduce="auto", timeout=D.TIMEOUT)


@pytest.mark.parametrize("xp,asked,nccl,got", [
    ("numpy", "auto", False, "mpi"), ("numpy", "mpi", True, "mpi"),
    ("cupy", "auto", True, "nccl"), ("cupy", "nccl", True, "nccl"),
    ("cupy", "mpi", False, "mpi"), ("cupy", "mpi", True, "mpi")])
def test_choose_allreduce(xp, asked, nccl, got):
    assert D.choose_allreduce(xp, asked, nccl_available=nccl) == got


@pytest.mark.parametrize("xp,asked,nccl,match", [
    ("numpy", "nccl", True, "allreduce nccl sums CuPy arrays on GPUs, and this run's arrays are NumPy"),
    ("cupy", "auto", False, r"this CuPy has no NCCL \(cupy.cuda.nccl.available is False\): install it"),
    ("cupy", "nccl", False, "with a CUDA-aware MPI, choose allreduce mpi"),
    ("numpy", "ring", True, "allreduce must be one of auto, mpi, nccl, got 'ring'")])
def test_choose_allreduce_refusals(xp, asked, nccl, match):
    with pytest.raises(ValueError, match=match):
        D.choose_allreduce(xp, asked, nccl_available=nccl)


def test_cupy_gradients_choose_nccl_or_refuse_by_what_is_installed(monkeypatch):
    """GradientAllReduce takes the NCCL answer from cupy itself: where CuPy has no NCCL (or is not
    installed, as here without a GPU) auto refuses with the way out instead of falling back."""
    from mincore.autograd import allreduce as A

    fake_cupy = SimpleNamespace(__name__="cupy")
    params = [SimpleNamespace(data=np.zeros(3, np.float32))]
    world = SimpleNamespace(allreduce="auto", size=2, rank=0, root=True)
    if not A.nccl_available():
        with pytest.raises(ValueError, match="this CuPy has no NCCL"):
            A.GradientAllReduce(world, params, fake_cupy)
    monkeypatch.setattr(A, "nccl_available", lambda: False)
    with pytest.raises(ValueError, match="this CuPy has no NCCL"):
        A.GradientAllReduce(world, params, fake_cupy)
    world.allreduce = "nccl"
    with pytest.raises(ValueError, match="this run's arrays are NumPy"):
        A.GradientAllReduce(world, params, np)


@pytest.mark.parametrize("local,size,devices,got", [(0, 2, 2, 0), (1, 2, 8, 1), (3, 4, 1, 0), (0, 1, 1, 0)])
def test_device_for_rank(local, size, devices, got):
    assert D.device_for_rank(local, size, devices) == got


def test_device_for_rank_refuses_more_ranks_than_gpus():
    with pytest.raises(ValueError, match="4 ranks on this machine and 2 GPUs visible to each"):
        D.device_for_rank(2, 4, 2)


def test_bucket_layout_splits_by_dtype_and_cap():
    sizes = [10, 30, 5, 100, 1, 20]
    dtypes = ["float32", "float32", "float64", "float32", "float64", "float32"]
    layout = D.bucket_layout(sizes, dtypes, cap_bytes=160)  # 40 float32 or 20 float64 per bucket
    assert [(str(dt), [i for i, _, _ in items], total) for dt, items, total in layout] == [
        ("float32", [0, 1], 40), ("float64", [2, 4], 6), ("float32", [3], 100), ("float32", [5], 20)]
    for _, items, total in layout:  # offsets tile each bucket
        assert [off for _, off, _ in items] == list(np.cumsum([0] + [n for _, _, n in items])[:-1])
        assert sum(n for _, _, n in items) == total
    assert len(D.bucket_layout(sizes, dtypes)) == 2  # the default cap: one bucket per dtype here
    with pytest.raises(ValueError, match="cap_bytes must be >= 1"):
        D.bucket_layout(sizes, dtypes, cap_bytes=0)


def test_shard_rows_of_tuples_and_dicts():
    x, y = np.arange(24).reshape(6, 4), np.arange(6)
    got = [P.shard_rows((x, {"y": y, "z": [y]}), r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
    np.testing.assert_array_equal(np.concatenate([g[1]["z"][0] for g in got]), y)
    assert got[1][1]["y"].tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"shape \(6, 4\) cannot be split into 4 shards of examples"):
        P.shard_rows((x, y), 0, 4)
    with pytest.raises(ValueError, match=r"shape \(\) cannot be split"):
        P.shard_rows(np.float32(1), 0, 2)


@pytest.mark.parametrize("batch,micro,size,match", [
    (32, 0, 3, "batch_size 32 cannot be split evenly over 3 ranks"),
    (64, 32, 3, r"micro-batches of 32 \(batch_size 64, micro_batch 32\) cannot be split evenly over 3 ranks")])
def test_check_shards(batch, micro, size, match):
    cfg = SimpleNamespace(batch_size=batch, micro_batch=micro)
    with pytest.raises(ValueError, match=match):
        P.check_shards(cfg, size)
    P.check_shards(cfg, 2)


def _generator(kind: str, seed: int, held: bool):
    g = np.random.Generator(np.random.PCG64(seed) if kind == "pcg64" else np.random.Philox(seed))
    if held:
        g.integers(0, 2**32, size=1, dtype=np.uint32)  # leaves half an output held back
    return g


@given(size=st.integers(1, 5), calls=st.lists(st.integers(0, 41), min_size=1, max_size=4),
       held=st.booleans(), kind=st.sampled_from(["pcg64", "philox"]), seed=st.integers(0, 2**32))
def test_dropout_rows_of_every_rank_make_the_one_process_draw(size, calls, held, kind, seed):
    """Each call asks for 2 bytes per element of the rank's rows (as dropout does); the ranks'
    pieces, in rank order, are the bytes one process draws, and every rank's Generator ends where
    the one process's does (so the next call, and a checkpoint, continue alike)."""
    one = _generator(kind, seed, held)
    ranks = [P.RowShardGenerator(_generator(kind, seed, held), r, size) for r in range(size)]
    for elements in calls:
        length = 2 * elements
        assert b"".join(g.bytes(length) for g in ranks) == one.bytes(size * length)
        for g in ranks:  # (str: Philox's state holds arrays)
            assert str(g.generator.bit_generator.state) == str(one.bit_generator.state)


def test_dropout_seeds_on_the_device_differ_per_rank_and_keep_the_stream():
    """The CuPy path draws a seed per mask: the shared stream advances as on one process, and the
    ranks get different seeds (independent masks) in [0, high)."""
    one = np.random.default_rng(3)
    ranks = [P.RowShardGenerator(np.random.default_rng(3), r, 4) for r in range(4)]
    seeds = [g.integers(2**63) for g in ranks]
    one.integers(2**63)
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert all(g.generator.bit_generator.state == one.bit_generator.state for g in ranks)


def test_shard_dropout_wraps_every_dropout_generator_once():
    from mincore.tasks import copy as C
    from mincore.tasks.loop import _rngs

    model = C.CopyModel(C.config("default", n_layers=2))
    before = _rngs(model)
    P.shard_dropout(model, 1, 2)
    wrapped = [m.rng for m in model.modules() if isinstance(getattr(m, "rng", None), P.RowShardGenerator)]
    assert len(wrapped) == len(before) >= 2
    assert _rngs(model) == before  # checkpoints keep the Generators themselves
    assert all(w.rank == 1 and w.size == 2 for w in wrapped)


def test_poll_until_spins_then_sleeps_and_gives_up_at_the_timeout():
    import time

    calls = []
    assert D.poll_until(lambda: calls.append(1) or len(calls) == 5, timeout=10) and len(calls) == 5
    t0 = time.monotonic()
    assert D.poll_until(lambda: False, timeout=0.05) is False
    assert 0.05 <= time.monotonic() - t0 < 2
