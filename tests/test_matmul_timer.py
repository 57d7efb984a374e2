"""ops.mm and ops.matmul_timer: the supported way for a profiler to see every matrix product of a step
(benchmarks/profile_step.py uses it)."""

from __future__ import annotations

import numpy as np

from mincore.autograd import Tensor, ops


def _tensors(rng, *shapes):
    return [Tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]


def test_mm_is_the_matrix_product():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    np.testing.assert_array_equal(ops.mm(x, y), x @ y)


def test_timer_counts_the_products_of_matmul_and_linear_both_ways():
    rng = np.random.default_rng(1)
    a, b = _tensors(rng, (2, 3, 4), (4, 5))  # batched a @ 2-D b: one GEMM forward, two backward
    x, w, bias = _tensors(rng, (6, 4), (4, 2), (2,))
    with ops.matmul_timer() as tally:
        loss = ops.matmul(a, b).sum() + ops.linear(x, w, bias).sum()
        assert tally.calls == 2
        loss.backward()
    assert tally.calls == 6 and tally.seconds > 0
    ops.mm(x.data, w.data)  # outside the block: not counted
    assert tally.calls == 6


def test_nested_timers_each_count_their_own_block():
    x = np.ones((2, 2))
    with ops.matmul_timer() as outer:
        ops.mm(x, x)
        with ops.matmul_timer() as inner:
            ops.mm(x, x)
        ops.mm(x, x)
    assert (outer.calls, inner.calls) == (2, 1)
