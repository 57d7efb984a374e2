"""VJP dot tests (float64 central differences) for every mincore.autograd primitive.

Shapes come from hypothesis (broadcasting pairs from hypothesis.extra.numpy); values come from a
drawn seed so that kinks (relu at 0, ties in max) are avoided with probability one.
"""

from __future__ import annotations

import numpy as np
import pytest
from autograd_check import vjp_dot_test
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mincore.autograd import F, Tensor, as_tensor, ops

small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4)
seeds = st.integers(0, 2**31)


def normal(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s)) for s in shapes]


@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div])
@given(shapes=pairs, seed=seeds)
def test_binary_broadcasting(op, shapes, seed):
    a, b = normal(seed, *shapes.input_shapes)
    if op is ops.div:
        b = np.sign(b) * (np.abs(b) + 0.5)  # keep away from 0
    vjp_dot_test(op, a, b, seed=seed)


@given(shapes=pairs, seed=seeds)
def test_pow_tensor_exponent(shapes, seed):
    a, b = normal(seed, *shapes.input_shapes)
    vjp_dot_test(ops.pow, np.abs(a) + 0.5, b, seed=seed)


@given(shape=small_shapes, seed=seeds, c=st.sampled_from([2.0, 3.0, 0.5, -1.0]))
def test_operators_with_python_scalars(shape, seed, c):
    (a,) = normal(seed, shape)
    a = np.abs(a) + 0.5
    for f in (lambda x: x * c + c, lambda x: c - x / c, lambda x: c / x, lambda x: x ** c, lambda x: -x):
        vjp_dot_test(f, a, seed=seed)


@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3),
       m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4), seed=seeds)
def test_matmul_batched(batch, m, k, n, seed):
    sa, sb = batch.input_shapes
    a, b = normal(seed, (*sa, m, k), (*sb, k, n))
    vjp_dot_test(ops.matmul, a, b, seed=seed)


@given(lead=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), k=st.integers(1, 5),
       n=st.integers(1, 5), bias=st.booleans(), seed=seeds)
def test_matmul_2d_weight_and_linear(lead, k, n, bias, seed):
    x, w, b = normal(seed, (*lead, k), (k, n), (n,))
    vjp_dot_test(ops.matmul, x, w, seed=seed)
    if bias:
        vjp_dot_test(ops.linear, x, w, b, seed=seed)
    else:
        vjp_dot_test(lambda x, w: ops.linear(x, w), x, w, seed=seed)


@st.composite
def axes_for(draw, shape):
    nd = len(shape)
    return draw(st.one_of(st.none(), st.integers(-nd, nd - 1),
                          st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple)))


@pytest.mark.parametrize("red", [ops.sum, ops.mean, ops.max])
@given(data=st.data(), shape=small_shapes, keepdims=st.booleans(), seed=seeds)
def test_reductions(red, data, shape, keepdims, seed):
    axis = data.draw(axes_for(shape))
    (a,) = normal(seed, shape)
    vjp_dot_test(lambda x: red(x, axis=axis, keepdims=keepdims), a, seed=seed)


@given(shape=small_shapes, data=st.data(), seed=seeds)
def test_reshape_transpose_broadcast(shape, data, seed):
    (a,) = normal(seed, shape)
    perm = data.draw(st.permutations(range(len(shape))))
    vjp_dot_test(lambda x: ops.transpose(x, perm), a, seed=seed)
    vjp_dot_test(lambda x: ops.reshape(x, (-1,)), a, seed=seed)
    vjp_dot_test(lambda x: ops.broadcast_to(x, (2, *shape)), a, seed=seed)


@given(shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=5), seed=seeds)
def test_getitem_basic_and_advanced(shape, seed):
    (a,) = normal(seed, shape)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, shape[0], size=6)  # repeats: gradients must accumulate
    vjp_dot_test(lambda x: x[1:, ..., ::2], a, seed=seed)
    vjp_dot_test(lambda x: x[:, -1], a, seed=seed)
    vjp_dot_test(lambda x: x[idx], a, seed=seed)


@given(shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=5), data=st.data(), seed=seeds)
def test_flip_sequences(shape, data, seed):
    (a,) = normal(seed, shape)
    lengths = np.array(data.draw(st.lists(st.integers(0, shape[1]), min_size=shape[0], max_size=shape[0])))
    vjp_dot_test(lambda x: ops.flip_sequences(x, lengths), a, seed=seed)
    out = ops.flip_sequences(as_tensor(a), lengths).data
    for b, n in enumerate(lengths):  # the oracle: reversed within the length, the padding untouched
        np.testing.assert_array_equal(out[b, :n], a[b, :n][::-1])
        np.testing.assert_array_equal(out[b, n:], a[b, n:])


@given(shape=small_shapes, n=st.integers(1, 3), data=st.data(), seed=seeds)
def test_concat_stack(shape, n, data, seed):
    axis = data.draw(st.integers(0, len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    arrs = normal(seed, *[shape[:axis] + (s,) + shape[axis + 1:] for s in sizes])
    vjp_dot_test(lambda *xs: ops.concat(xs, axis=axis), *arrs, seed=seed)
    same = normal(seed + 1, *[shape] * n)
    vjp_dot_test(lambda *xs: ops.stack(xs, axis=axis), *same, seed=seed)


@pytest.mark.parametrize("f", [ops.exp, ops.log, ops.tanh, ops.sigmoid, ops.softplus, ops.relu, ops.gelu,
                               ops.silu])
@given(shape=small_shapes, seed=seeds)
def test_elementwise(f, shape, seed):
    (a,) = normal(seed, shape)
    vjp_dot_test(f, np.abs(a) + 0.1 if f is ops.log else 3 * a, seed=seed)


def test_activation_values():
    x = np.array([-30.0, -1.0, 0.0, 1.0, 30.0])
    t = ops.sigmoid(x_t := as_tensor(x))
    np.testing.assert_allclose(t.data, 1 / (1 + np.exp(-x)), rtol=1e-12)
    np.testing.assert_allclose(ops.softplus(x_t).data, np.log1p(np.exp(x)), rtol=1e-12)
    np.testing.assert_allclose(ops.silu(x_t).data, x / (1 + np.exp(-x)), rtol=1e-12)
    assert ops.gelu(x_t).data[2] == 0 and abs(ops.gelu(x_t).data[3] - 0.8413) < 1e-3


@given(v=st.integers(1, 6), d=st.integers(1, 4), lead=hnp.array_shapes(max_dims=2, max_side=5), seed=seeds)
def test_embedding(v, d, lead, seed):
    (w,) = normal(seed, (v, d))
    idx = np.random.default_rng(seed).integers(0, v, size=lead)
    vjp_dot_test(lambda w: F.embedding(w, idx), w, seed=seed)


@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), d=st.integers(2, 6), seed=seeds,
       affine=st.booleans())
def test_layer_norm_rms_norm(lead, d, seed, affine):
    x, w, b = normal(seed, (*lead, d), (d,), (d,))
    if affine:
        vjp_dot_test(F.layer_norm, x, w, b, seed=seed)
        vjp_dot_test(F.rms_norm, x, w, seed=seed)
    else:
        vjp_dot_test(lambda x: F.layer_norm(x, None, None), x, seed=seed)
        vjp_dot_test(lambda x: F.rms_norm(x, None), x, seed=seed)
    y = F.layer_norm(as_tensor(x), None, None).data
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)


@given(shape=small_shapes, p=st.sampled_from([0.0, 0.1, 0.5]), seed=seeds)
def test_dropout(shape, p, seed):
    (x,) = normal(seed, shape)
    vjp_dot_test(lambda x: F.dropout(x, p, np.random.default_rng(seed)), x, seed=seed)
    assert F.dropout(as_tensor(x), p, np.random.default_rng(seed), training=False).data is x


def test_dropout_statistics():
    x = as_tensor(np.ones((200, 500)))
    y = F.dropout(x, 0.3, np.random.default_rng(0)).data
    assert abs((y == 0).mean() - 0.3) < 0.01 and abs(y.mean() - 1) < 0.02


@given(b=st.integers(1, 2), t=st.integers(1, 6), c=st.integers(1, 3), k=st.integers(1, 4),
       bias=st.booleans(), seed=seeds)
def test_causal_conv1d(b, t, c, k, bias, seed):
    x, w, bb, pre = normal(seed, (b, t, c), (k, c), (c,), (b, k - 1, c))
    vjp_dot_test(lambda x, w, p: F.causal_conv1d(x, w, None, p), x, w, pre, seed=seed)
    if bias:
        vjp_dot_test(F.causal_conv1d, x, w, bb, seed=seed)
    # causality: output at t depends on inputs up to t only
    y = F.causal_conv1d(as_tensor(x), as_tensor(w)).data
    x2 = x.copy()
    x2[:, -1] += 1
    np.testing.assert_array_equal(F.causal_conv1d(as_tensor(x2), as_tensor(w)).data[:, :-1], y[:, :-1])


@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), v=st.integers(2, 6), seed=seeds,
       scale=st.sampled_from([1.0, 50.0]))
def test_cross_entropy(lead, v, seed, scale):
    (z,) = normal(seed, (*lead, v))
    rng = np.random.default_rng(seed)
    t = rng.integers(0, v, size=lead)
    t[rng.random(lead) < 0.3] = -100  # ignored positions
    vjp_dot_test(lambda z: F.cross_entropy(z * scale, t), z, seed=seed)
    mask = rng.random(lead) < 0.7
    vjp_dot_test(lambda z: F.cross_entropy(z, t, mask=mask), z, seed=seed)


def test_cross_entropy_value_stable_and_ignored():
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0], [5.0, 1.0, 2.0]])
    t = np.array([0, 2, -100])
    loss = F.cross_entropy(as_tensor(z), t).data
    np.testing.assert_allclose(loss, (0.0 + np.log(3)) / 2, rtol=1e-12)
    assert F.cross_entropy(as_tensor(z), np.full(3, -100)).data == 0


@given(shape=small_shapes, seed=seeds, masked=st.booleans())
def test_mse(shape, seed, masked):
    p, t = normal(seed, shape, shape)
    m = np.random.default_rng(seed).random(shape) < 0.6 if masked else None
    vjp_dot_test(lambda p, t: F.mse(p, t, m), p, t, seed=seed)


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float32, 2e-6, 1e-6), (np.float64, 1e-13, 1e-13)])
@given(n=st.sampled_from([0, 1, 7, 4095, 4097, 3 * 4096 + 5]), seed=seeds)
def test_gelu_fused_matches_formula(dtype, rtol, atol, n, seed):
    """The numba GELU (mincore.kernels.numba_act) against the array formula it replaces, value and VJP,
    on sizes around its 4096-element jobs and on saturating inputs (|x| up to 1e13: the tails)."""
    from mincore.autograd.elementwise import gelu_reference

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[: min(n, 8)] = np.array([-1e13, -1e5, -30, -5, 0, 5, 30, 1e13], dtype)[: min(n, 8)]
    g = rng.standard_normal(n).astype(dtype)
    xf, xr = Tensor(x.copy(), requires_grad=True), Tensor(x.astype(np.float64), requires_grad=True)
    fused, ref = ops.gelu(xf), gelu_reference(xr)
    fused.backward(g)
    ref.backward(g.astype(np.float64))
    assert fused.data.dtype == dtype and xf.grad.dtype == dtype
    np.testing.assert_allclose(fused.data, ref.data, rtol=rtol, atol=atol)
    np.testing.assert_allclose(xf.grad, xr.grad, rtol=rtol, atol=atol)


def test_gelu_non_contiguous_takes_the_formula():
    x = np.random.default_rng(0).standard_normal((6, 4))[:, ::2]
    from mincore.autograd.elementwise import gelu_reference

    np.testing.assert_array_equal(ops.gelu(as_tensor(x)).data, gelu_reference(as_tensor(x)).data)
