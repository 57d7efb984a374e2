"""Tape semantics of mincore.autograd: recording, backward order, accumulation, no_grad, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mincore.autograd import F, Parameter, Tensor, is_grad_enabled, no_grad, ops, primitive, tensor


def leaf(*shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def test_shared_subexpression_sums_gradients():
    x = leaf(3)
    y = x * x  # x used twice in one op, y used twice below
    loss = (y + y * 2.0).sum()
    loss.backward()
    np.testing.assert_allclose(x.grad, 6 * x.data)


def test_gradients_accumulate_across_backward_calls():
    x = leaf(4)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 3 + 2 * x.data)


def test_backward_twice_raises_unless_retained():
    x = leaf(2)
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * np.exp(x.data) * (1 + x.data))
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_non_scalar_needs_seed_and_seed_shape_checked():
    x = leaf(2, 3)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="not a scalar"):
        y.backward()
    with pytest.raises(ValueError, match="seed gradient shape"):
        y.backward(np.ones(3))
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, 2.0)


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_no_grad_stops_recording_and_restores():
    x = leaf(3)
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0
    assert is_grad_enabled() and not y.requires_grad and y._vjp is None


def test_only_leaves_keep_grad_and_inputs_without_grad_get_none():
    x, c = leaf(3), Tensor(np.ones(3))
    mid = x * c
    (mid * mid).sum().backward()
    assert mid.grad is None and c.grad is None and x.grad is not None


def test_deep_chain_has_no_recursion_limit():
    x = leaf(1)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 1.0)


def test_float32_stays_float32():
    x = Parameter(np.ones((2, 3), np.float32))
    loss = F.layer_norm(ops.gelu(x * 2.0 + 1.0), None, None).sum() / 3.0
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32


def test_numpy_scalar_on_the_left():
    x = leaf(3)
    y = np.float64(2.0) * x
    assert isinstance(y, Tensor)


def test_primitive_helper_with_optional_input():
    @primitive
    def scale(a, s):
        out = a * (2.0 if s is None else s)

        def scale_vjp(g):
            return g * (2.0 if s is None else s), (None if s is None else (g * a).sum(axis=0))
        return out, scale_vjp

    x = leaf(2, 3)
    scale(x, None).sum().backward()
    np.testing.assert_allclose(x.grad, 2.0)
    s = leaf(3, seed=1)
    scale(x, s).sum().backward()
    np.testing.assert_allclose(s.grad, x.data.sum(axis=0))


def test_tensor_constructor_and_repr():
    t = tensor([1.0, 2.0])
    assert t.dtype == np.float32 and "shape=(2,)" in repr(t)
    assert tensor([1.0], dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="not a scalar"):
        t.item()


def test_backward_releases_saved_state():
    x = leaf(3)
    mid = x.exp()
    loss = (mid * mid).sum()
    loss.backward()
    assert loss._vjp is None and loss._inputs == () and mid._inputs == ()


def test_getitem_basic_and_repeated_advanced_indices():
    x = leaf(4, 2)
    (x[1:3, -1].sum() + x[np.array([0, 0, 3])].sum()).backward()
    want = np.zeros((4, 2))
    want[1:3, -1] += 1
    want[0] += 2
    want[3] += 1
    np.testing.assert_array_equal(x.grad, want)
