"""Selective copying: data generator invariants, held-out set, the model against SequenceModel, presets."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mincore.autograd import F
from mincore.models import SequenceModel
from mincore.tasks import copy as C
from mincore.tasks import get_task


@given(size=st.integers(1, 6), n=st.integers(1, 8), extra=st.integers(0, 20), seed=st.integers(0, 2**32))
def test_batch_invariants(size, n, extra, seed):
    L = 2 * n + extra
    x, y = C.make_batch(np.random.default_rng(seed), size, L, n)
    assert x.shape == (size, L) and y.shape == (size, n)
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert ((y >= 1) & (y <= 14)).all()  # data tokens 1..14
    assert (x[:, L - n:] == C.MARKER).all()  # then N markers
    region = x[:, :L - n]
    assert ((region == C.NOISE) | ((region >= 1) & (region <= 14))).all()
    assert ((region != C.NOISE).sum(axis=1) == n).all()  # exactly N data tokens, distinct positions
    for row, target in zip(region, y, strict=True):
        assert (row[row != C.NOISE] == target).all()  # targets = the data tokens in order of position


def test_batch_seeded_and_positions_vary():
    a = C.make_batch(np.random.default_rng(3), 8, 64, 16)
    b = C.make_batch(np.random.default_rng(3), 8, 64, 16)
    c = C.make_batch(np.random.default_rng(4), 8, 64, 16)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    first = np.argmax(a[0] != C.NOISE, axis=1)
    assert len(set(first.tolist())) > 1  # positions are random, not a fixed layout


def test_held_out_set_is_fixed_and_apart_from_training():
    cfg = dataclasses.replace(C.PRESETS["default"], eval_size=64)
    t0, t1 = C.CopyTask(cfg), C.CopyTask(dataclasses.replace(cfg, seed=1))
    assert np.array_equal(t0.eval_x, t1.eval_x)  # the same held-out set whatever the training seed
    x, _ = t0.batch(np.random.default_rng((cfg.seed, 1)), 64)
    seen = {r.tobytes() for r in x}
    assert not any(r.tobytes() in seen for r in t0.eval_x)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_copy_model_equals_sequence_model(cell):
    """The trimmed forward (token table for block 1, projection/head on the N outputs only) computes
    exactly what the plain SequenceModel computes at those positions, gradients included."""
    cfg = C.CopyConfig(model=cell, dropout=0.0, seq_len=24, n_data=6, d_model=8, expansion=2.0)
    m = C.CopyModel(cfg)
    ref = SequenceModel(vocab_size=16, d_model=8, d_output=16, n_layers=3, cell=cell, expansion=2.0,
                        norm="rms", dropout=0.0, seed=cfg.seed)
    names = [n for n, _ in m.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()]
    ref.load_state_dict(m.state_dict())
    m.to(dtype=np.float64)
    ref.to(dtype=np.float64)
    x, y = C.make_batch(np.random.default_rng(1), 5, 24, 6)
    a, b = m(x, 6), ref(x)[0][:, -6:]
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-12)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    for n, p, q in zip(names, m.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12, err_msg=n)


def test_presets():
    d, p = C.PRESETS["default"], C.PRESETS["paper"]
    for cfg in (d, p):
        cfg.validate()
        assert (cfg.n_data, cfg.vocab, cfg.d_model, cfg.expansion, cfg.n_layers) == (16, 16, 64, 6.0, 3)
    assert p.dropout == 0.1 and p.train_lens == ()  # the paper's training: dropout 0.1, one length
    # the default trains without dropout (fresh data every step: nothing to overfit) on lengths up to
    # the held-out L, which stays the one it is scored on
    assert d.dropout == 0.0 and max(d.train_lens) == d.seq_len == 48 and min(d.train_lens) >= 2 * d.n_data
    assert (p.seq_len, p.batch_size, p.micro_batch, p.lr, p.weight_decay, p.clip, p.steps) == \
        (4096, 64, 32, 3e-4, 0.05, 1.0, 400_000)
    assert p.patience > 0  # early stopping
    assert C.config("default", steps=5, seed=None).steps == 5
    with pytest.raises(ValueError, match="preset"):
        C.config("nope")
    with pytest.raises(ValueError, match="seq_len"):
        C.config("default", seq_len=20).validate()
    with pytest.raises(ValueError, match="model"):
        C.config("default", model="gru").validate()
    with pytest.raises(ValueError, match="unknown task"):
        get_task("shakespear")


def test_train_lens_one_length_per_batch_held_out_at_seq_len():
    """Each training batch takes one of train_lens (every one of them turns up), with the N markers at
    its end; the held-out set keeps seq_len."""
    cfg = dataclasses.replace(C.PRESETS["default"], eval_size=8, train_lens=(32, 40, 48))
    task = C.CopyTask(cfg)
    rng, seen = np.random.default_rng(0), set()
    for _ in range(30):
        x, y = task.batch(rng, 4)
        assert y.shape == (4, 16) and (x[:, -16:] == C.MARKER).all()
        assert ((x[:, :-16] != C.NOISE).sum(axis=1) == 16).all()
        seen.add(x.shape[1])
    assert seen == {32, 40, 48}
    assert task.eval_x.shape == (8, cfg.seq_len)


def test_without_train_lens_batches_are_make_batch_at_seq_len():
    cfg = dataclasses.replace(C.PRESETS["default"], eval_size=8, train_lens=())
    got = C.CopyTask(cfg).batch(np.random.default_rng(2), 4)
    want = C.make_batch(np.random.default_rng(2), 4, cfg.seq_len, cfg.n_data)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_train_lens_checked_and_kept_in_the_saved_config():
    with pytest.raises(ValueError, match="train_lens"):
        C.config("default", train_lens=(32, 31)).validate()  # 31 < 2 * N
    cfg = C.config("default")
    assert C.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg  # JSON list -> tuple


def test_no_decay_on_gate_projections():
    task = C.CopyTask(dataclasses.replace(C.PRESETS["default"], eval_size=8))
    decayed = {id(p) for g in task.param_groups() if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in task.model.named_parameters():
        wants = n.endswith(".weight") and ".rnn.to_hidden." not in n and "norm" not in n
        assert (id(p) in decayed) == wants, n


def test_paper_preset_smoke(tmp_path):
    """Two steps of the paper setting (L = 4096, micro-batches) with a tiny batch and held-out set."""
    cfg = C.config("paper", steps=2, batch_size=4, micro_batch=2, eval_size=4, eval_batch=4, eval_every=1,
                   warmup=1)
    s = C.train(cfg, tmp_path, progress=False)
    assert s["steps"] == 2 and s["config"]["seq_len"] == 4096
    assert 0.0 <= s["accuracy"] <= 1.0 and np.isfinite(s["loss"])


def test_lru_model_trains_with_its_own_parameter_group(tmp_path):
    """--model lru: nu_log, theta_log, gamma_log and B of every LRU in a group of their own at
    lr * lru_lr_factor without weight decay (Orvieto et al. 2023); a few steps run and stay finite."""
    from mincore.layers import LRU
    from mincore.tasks import loop

    cfg = C.config("default", model="lru", seq_len=8, n_data=2, d_model=8, n_layers=2, batch_size=2,
                   eval_size=4, eval_batch=2, steps=3, eval_every=3, warmup=1)
    task = C.CopyTask(cfg)
    lrus = [m for m in task.model.modules() if isinstance(m, LRU)]
    assert len(lrus) == cfg.n_layers
    slow = [g for g in task.param_groups() if g.get("lr") == cfg.lr * cfg.lru_lr_factor]
    assert len(slow) == 1 and slow[0]["weight_decay"] == 0.0
    assert {id(p) for p in slow[0]["params"]} == {id(getattr(m, n)) for m in lrus
                                                   for n in ("nu_log", "theta_log", "gamma_log", "B")}
    s = loop.train(task, cfg, tmp_path, task_name="copy", progress=False)
    assert s["steps"] == 3 and np.isfinite(s["loss"])
