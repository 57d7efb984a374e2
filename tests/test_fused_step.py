"""The fused recurrent step (mincore.inference, mincore.generation) against the per-operation step and
the parallel forward: logits in float64 for every cell and option the models use, at batch 1 and
batched, serial and parallel; state round trips; the sampler; generated text through both paths;
what the fused step refuses; the RL rollouts' carry mode."""

from __future__ import annotations

import types

import numpy as np
import pytest

from mincore import inference_jit as J
from mincore.autograd import nn
from mincore.generation import generate_tokens, sample_rows
from mincore.inference import FusedStepper, Unsupported, fused_stepper
from mincore.models import SequenceModel

V = 7
CASES = [  # (cell, SequenceModel options)
    ("mingru", {}),
    ("mingru", {"cell_kw": {"log_space": True, "learn_h0": True}}),
    ("mingru", {"expansion": 1.0, "norm": "layer", "conv_kernel": 0}),  # no output projection, no conv
    ("minlstm", {}),
    ("minlstm", {"cell_kw": {"normalize": False, "learn_h0": True}, "mlp": False}),
    ("minlstm", {"conv_kernel": 1, "norm": "layer"}),  # a conv without a prefix
    ("lru", {}),
    ("lru", {"cell_kw": {"learn_h0": True, "r_min": 0.5}, "conv_kernel": 2}),
]


def make(cell, dtype=np.float64, seed=0, **kw):
    opts = dict(d_model=8, d_output=V, vocab_size=V, n_layers=2, cell=cell, expansion=2.0, conv_kernel=4,
                mlp=True, mlp_hidden=16, seed=seed)
    m = SequenceModel(**{**opts, **kw}).to(dtype=dtype).eval()
    rng = np.random.default_rng(seed + 1)
    for blk in m.blocks:  # learned initial states start at zero: make them count
        if blk.rnn.h0 is not None:
            blk.rnn.h0.data = rng.normal(size=blk.rnn.h0.shape).astype(dtype)
    for p in (m.norm.weight, m.blocks[0].norm1.weight):  # and norms that are not all ones
        p.data = (1 + 0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return m


@pytest.mark.parametrize("cell,kw", CASES)
@pytest.mark.parametrize("batch", [1, 3, 2 * J.TILE + 3])  # one row, one tile, three tiles
def test_fused_step_equals_the_step_and_the_parallel_forward_float64(cell, kw, batch):
    m = make(cell, **kw)
    ids = np.random.default_rng(batch).integers(0, V, (batch, 11))
    want = m(ids)[0].data
    st = FusedStepper.from_model(m)
    S, state = st.state(None, batch), None
    for t in range(ids.shape[1]):
        got = st.step(ids[:, t], S)
        ref, state = m.step(ids[:, t], state)
        np.testing.assert_allclose(got, ref.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, want[:, t], rtol=1e-11, atol=1e-11)
    for (p1, h1), (p2, h2) in zip(st.model_state(S), state, strict=True):  # the same state, in the model's form
        assert (p1 is None) == (p2 is None)
        if p1 is not None:
            np.testing.assert_allclose(p1.data, p2.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h1.data, h2.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,kw", CASES[::3])
def test_after_a_parallel_prompt_pass_the_fused_step_continues_it(cell, kw):
    """generate's order: a parallel pass over the prompt, its state converted, then fused steps."""
    m = make(cell, **kw)
    ids = np.random.default_rng(0).integers(0, V, (2, 12))
    want = m(ids)[0].data
    st = FusedStepper.from_model(m)
    for split in (1, 2, 3, 8):  # shorter than, equal to and longer than the conv's K - 1
        _, state = m(ids[:, :split])
        S = st.state(state, 2)
        for t in range(split, ids.shape[1]):
            got = st.step(ids[:, t], S)
        np.testing.assert_allclose(got, want[:, -1], rtol=1e-11, atol=1e-11)


def test_serial_and_parallel_entry_points_agree_bitwise():
    m = make("minlstm", dtype=np.float32)
    st = FusedStepper.from_model(m)
    B = 2 * J.TILE + 3
    X = np.random.default_rng(0).standard_normal((B, 8)).astype(np.float32)
    S = np.random.default_rng(1).standard_normal((B, st.width)).astype(np.float32)
    out = []
    for run in (J.rows_serial, J.rows_parallel):
        X2, S2, logits = X.copy(), S.copy(), np.empty((B, V), np.float32)
        run(st.P, st.L, S2, X2, logits)
        out.append((X2, S2, logits))
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)
    u, got = np.random.default_rng(2).random((5, B)), []
    for run in (J.generate_serial, J.generate_parallel):
        S2, last, toks = S.copy(), out[0][2].copy(), np.empty((5, B), np.int64)
        run(st.P, st.L, S2, last, u, 0.9, 3, toks)
        got.append((S2, last, toks))
    for a, b in zip(*got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["mingru", "minlstm", "lru"])
def test_float32_fused_step_is_the_step_to_rounding(cell):
    m = make(cell, dtype=np.float32)
    ids = np.random.default_rng(0).integers(0, V, (2, 30))
    st = FusedStepper.from_model(m)
    S, state = st.state(None, 2), None
    for t in range(ids.shape[1]):
        got = st.step(ids[:, t], S)
        ref, state = m.step(ids[:, t], state)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref.data, rtol=2e-5, atol=2e-5)


def test_vector_inputs_and_a_stack_without_head():
    m = SequenceModel(d_model=8, d_output=3, d_input=5, n_layers=2, cell="mingru", mlp=True, conv_kernel=3,
                      seed=2).to(dtype=np.float64).eval()
    x = np.random.default_rng(0).standard_normal((4, 6, 5))
    want = m(x)[0].data
    st = FusedStepper.from_model(m)
    S = st.state(None, 4)
    for t in range(6):
        got = st.step(x[:, t], S)
    np.testing.assert_allclose(got, want[:, -1], rtol=1e-11, atol=1e-11)
    blocks = FusedStepper(m.blocks)  # the residual stream only, as the RL rollouts use it
    h = m.embed(x[:, 0]).data
    ref = h
    for blk in m.blocks:
        ref, _ = blk.step(ref, None)
    np.testing.assert_allclose(blocks.step(h, blocks.state(None, 4)), ref.data, rtol=1e-12, atol=1e-12)


def test_unsupported_models_say_why():
    m = make("mingru", dropout=0.1)
    m.train()
    stepper, why = fused_stepper(m)
    assert stepper is None and "dropout" in why and "eval()" in why
    with pytest.raises(Unsupported, match="float32, float64"):
        FusedStepper.from_model(make("mingru").to(dtype=np.float16))
    m = make("mingru")
    m.blocks[1].mlp = nn.GLU(8).to(dtype=np.float64)
    with pytest.raises(Unsupported, match=r"blocks\[1\]: mlp is a GLU"):
        FusedStepper.from_model(m)
    m = make("mingru")
    m.blocks[0].norm1.weight.data = m.blocks[0].norm1.weight.data.astype(np.float32)
    with pytest.raises(Unsupported, match="dtype"):
        FusedStepper.from_model(m)
    st = FusedStepper.from_model(make("mingru"))
    with pytest.raises(ValueError, match="state"):
        st.step(np.array([1, 2]), st.state(None, 3))


def test_the_fused_sampler_is_the_per_op_sampler():
    rng = np.random.default_rng(0)
    for temperature, top_k in ((1.0, 0), (0.7, 3), (1e-300, 2), (0.0, 0), (2.5, V + 3)):
        for _ in range(200):
            z = rng.standard_normal(V) * 3
            u = rng.random()
            want = sample_rows(z[None], [u], temperature, top_k or None)[0]
            assert J.sample(z, u, temperature, top_k) == want


@pytest.mark.parametrize("batch", [1, 6, J.TILE + 2])
def test_generated_tokens_are_the_same_through_both_paths_float64(batch):
    m = make("mingru")
    st = FusedStepper.from_model(m)
    for temperature, top_k in ((1.0, None), (0.8, 3), (0.0, None)):
        kw = dict(batch=batch, temperature=temperature, top_k=top_k, seed=5)
        fused = np.array(list(generate_tokens(m, [1, 2, 3], 150, stepper=st, **kw)))
        ops = np.array(list(generate_tokens(m, [1, 2, 3], 150, **kw)))
        assert fused.shape == (150, batch)
        np.testing.assert_array_equal(fused, ops)
    assert batch == 1 or len({tuple(c) for c in fused.T}) == 1  # greedy: every row the same text


def test_a_long_prompt_takes_the_parallel_pass_and_gives_the_same_tokens(monkeypatch):
    from mincore import generation

    m = make("lru")
    st = FusedStepper.from_model(m)
    prompt = np.random.default_rng(0).integers(0, V, 40)
    short = np.array(list(generate_tokens(m, prompt, 60, batch=2, seed=1, stepper=st)))
    calls, forward = [], SequenceModel.forward
    monkeypatch.setattr(generation, "FUSED_PROMPT", 39)  # the prompt has 40
    monkeypatch.setattr(SequenceModel, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    long = np.array(list(generate_tokens(m, prompt, 60, batch=2, seed=1, stepper=st)))
    assert calls == [1]
    np.testing.assert_array_equal(short, long)


def test_generation_at_batch_1_is_the_shakespeare_generator():
    """The per-op path draws exactly the numbers mincore.tasks.shakespeare.generate draws."""
    from mincore.tasks import shakespeare as S

    vocab = S.Vocab("abcdefg")
    m = make("minlstm")
    old = "".join(S.generate(m, vocab, "abc", 120, temperature=0.9, top_k=4, seed=11))
    for st in (None, FusedStepper.from_model(m)):
        new = vocab.decode(t[0] for t in generate_tokens(m, vocab.encode("abc"), 120, temperature=0.9, top_k=4,
                                                         seed=11, stepper=st))
        assert new == old


def test_generation_checks_its_arguments():
    m = make("mingru")
    for kw, name in (({"temperature": float("nan")}, "temperature"), ({"top_k": 0}, "top_k"),
                     ({"batch": 0}, "batch")):
        with pytest.raises(ValueError, match=name):
            next(generate_tokens(m, [1], 3, **kw))
    with pytest.raises(ValueError, match="prompt"):
        next(generate_tokens(m, [], 3))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_rl_carry_rollouts_act_the_same_fused(cell):
    """DecisionPolicy's carry mode runs the blocks fused; its actions are the per-op act_step's."""
    from mincore.tasks.rl import eval as rl_eval
    from mincore.tasks.rl.model import DecisionRNN

    model = DecisionRNN(4, 2, d_model=16, cell=cell, max_timestep=50, seed=3).to(dtype=np.float64).eval()
    pol = {f: rl_eval.DecisionPolicy(model, np.zeros(4), np.ones(4), K=3, target_return=500.0, mode="carry",
                                     fused=f) for f in (True, False)}
    for p in pol.values():
        p.reset(5)
    assert pol[True].stepper is not None and pol[True].fallback is None and pol[False].stepper is None
    rng = np.random.default_rng(0)
    for _ in range(8):
        obs, r = rng.standard_normal((5, 4)), rng.standard_normal(5)
        acts = {f: p.act(obs) for f, p in pol.items()}
        np.testing.assert_allclose(acts[True], acts[False], rtol=1e-12, atol=1e-12)
        for p in pol.values():
            p.observe(acts[False], r)
    model.train()  # dropout active: the per-op step, and the reason kept
    pol[True].reset(5)
    assert pol[True].stepper is None and "dropout" in pol[True].fallback
    model.eval()  # a policy feeding the model another array module (a GPU's) keeps to the model's step
    device = rl_eval.DecisionPolicy(model, np.zeros(4), np.ones(4), mode="carry", xp=types.SimpleNamespace(
        __name__="cupy", asarray=np.asarray))
    device.reset(2)
    assert device.stepper is None and "arrays are cupy" in device.fallback
