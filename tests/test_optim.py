"""Adam / AdamW against their update equations written out here, clipping, schedules, optimizer
state round trip, and a small model that learns a toy sequence task."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mincore.autograd import F, Parameter, optim
from mincore.models import SequenceModel

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.1, 0.3, 0.0]), np.array([1.0, 1.0, -3.0]),
         np.array([0.0, -0.2, 0.7])]


def reference_adam(p, lr, b1, b2, eps, wd, decoupled):
    """The update equations (Kingma & Ba 2015, alg. 1; Loshchilov & Hutter 2019, alg. 2)."""
    p, m, v, out = p.copy(), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(GRADS, start=1):
        if not decoupled:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        if decoupled:
            p = p - lr * wd * p
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("cls,wd", [(optim.Adam, 0.0), (optim.Adam, 0.1), (optim.AdamW, 0.0),
                                    (optim.AdamW, 0.1)])
def test_adam_matches_equations(cls, wd):
    p0 = np.array([1.0, -2.0, 0.5])
    p = Parameter(p0.copy())
    opt = cls([p], lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    want = reference_adam(p0, 0.05, 0.8, 0.95, 1e-6, wd, cls is optim.AdamW)
    for g, w in zip(GRADS, want, strict=True):
        p.grad = g.copy()
        opt.step()
        np.testing.assert_allclose(p.data, w, rtol=1e-12, atol=1e-14)


def test_param_groups_own_lr_and_decay_and_state_round_trip():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2), no_decay=True)
    groups = optim.param_groups([("a", a), ("b", b)], weight_decay=0.5)
    groups[1]["lr"] = 0.01
    opt = optim.AdamW(groups, lr=0.1)
    a.grad, b.grad = np.zeros(3), np.zeros(2)
    opt.step()  # zero gradients: only the decoupled decay moves a; b has no decay
    np.testing.assert_allclose(a.data, 1 - 0.1 * 0.5)
    np.testing.assert_allclose(b.data, 1.0)
    sd = opt.state_dict()
    a2, b2 = Parameter(a.data.copy()), Parameter(b.data.copy(), no_decay=True)
    opt2 = optim.AdamW(optim.param_groups([("a", a2), ("b", b2)], weight_decay=0.5), lr=0.1)
    opt2.load_state_dict(sd)
    for o, (x, y) in ((opt, (a, b)), (opt2, (a2, b2))):
        x.grad, y.grad = np.full(3, 0.3), np.full(2, -0.2)
        o.step()
    np.testing.assert_array_equal(a.data, a2.data)
    np.testing.assert_array_equal(b.data, b2.data)
    assert opt2.param_groups[1]["lr"] == 0.01 and opt2.t == 2


def test_lr_factor_scales_every_group():
    p, q = Parameter(np.ones(1)), Parameter(np.ones(1))
    opt = optim.Adam([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.1}])
    opt.set_lr_factor(0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]


def test_clip_grad_norm_global():
    p, q = Parameter(np.array([3.0, 0.0])), Parameter(np.array([4.0]))
    p.grad, q.grad = np.array([3.0, 0.0]), np.array([4.0])
    assert optim.clip_grad_norm([p, q], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([p.grad, q.grad]), [0.6, 0.0, 0.8], rtol=1e-6)
    assert optim.clip_grad_norm([p, q], 10.0) == pytest.approx(1.0, rel=1e-5)  # no change below max
    np.testing.assert_allclose(q.grad, [0.8], rtol=1e-6)


def test_schedules():
    assert optim.linear_warmup(0, 10) == pytest.approx(0.1) and optim.linear_warmup(9, 10) == 1.0
    assert optim.linear_warmup(50, 0) == 1.0
    f = [optim.warmup_cosine(s, 10, 110, min_factor=0.1) for s in range(120)]
    assert f[9] == 1.0 and f[10] == pytest.approx(1.0) and f[110] == pytest.approx(0.1) and f[119] == f[110]
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert np.all(np.diff(f[10:]) <= 0)  # monotone decay after warmup


def test_empty_parameter_list_rejected():
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])


def delayed_copy_batch(rng, batch=16, T=24, vocab=4, delay=1):
    """Targets are the inputs delayed by `delay` steps (first `delay` positions ignored)."""
    x = rng.integers(0, vocab, (batch, T))
    y = np.full_like(x, -100)
    y[:, delay:] = x[:, :-delay]
    return x, y


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "lru"])
def test_small_model_learns_delayed_copy(cell):
    """Loss falls by a factor of 20 or more (from ~ln 4 = 1.39 to below 0.07) within 100 AdamW steps
    (observed: about 0.005 for every cell)."""
    rng = np.random.default_rng(0)
    m = SequenceModel(vocab_size=4, d_model=16, d_output=4, n_layers=2, cell=cell, expansion=2.0, seed=0)
    opt = optim.AdamW(m.param_groups(0.01), lr=1e-2)
    losses = []
    for step in range(100):
        x, y = delayed_copy_batch(rng)
        loss = F.cross_entropy(m(x)[0], y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(m.parameters(), 1.0)
        opt.set_lr_factor(optim.warmup_cosine(step, 10, 100, 0.1))
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert first > 1.2 and last < first / 20, (first, last)
