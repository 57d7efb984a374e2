"""mincore.torch's modules (MinGRU, MinLSTM, LRU): against mincore.layers and minGRU-pytorch with
copied weights, step against forward, chunks, torch.compile of a small model, a small model that
trains, and docs/INTEROP.md's PyTorch example. Skipped where torch is not installed (CI installs
it); the functions are tested in tests/test_torch_adapter.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import mincore
from mincore import layers
from mincore.autograd import Tensor

torch = pytest.importorskip("torch")
import mincore.torch as mt  # noqa: E402  (after the skip: it imports torch)


def _attr(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def copy_into_layer(tm, ml):
    """tm's (torch module) parameters into ml (the mincore.layers twin): Linear weights transposed."""
    for name, p in tm.named_parameters():
        arr = p.detach().numpy()
        _attr(ml, name).data = (arr.T if name.endswith("weight") else arr).copy()


def layer_grad(ml, name):
    """The gradient of the mincore.layers parameter (as the torch layout), zeros where it has none."""
    p = _attr(ml, name)
    g = np.zeros(p.shape) if p.grad is None else p.grad
    return g.T if name.endswith("weight") else g


MODULES = [
    pytest.param(mt.MinGRU, layers.MinGRU, {"log_space": True, "learn_h0": True}, 1.5, id="mingru-log-h0"),
    pytest.param(mt.MinGRU, layers.MinGRU, {}, 1.0, id="mingru-noproj"),
    pytest.param(mt.MinLSTM, layers.MinLSTM, {"learn_h0": True}, 2.0, id="minlstm-h0"),
    pytest.param(mt.MinLSTM, layers.MinLSTM, {"normalize": False, "log_space": True}, 1.0, id="minlstm-raw-log"),
    pytest.param(mt.LRU, layers.LRU, {"learn_h0": True}, 1.5, id="lru-h0"),
]


@pytest.mark.parametrize("T", [0, 1, 13])
@pytest.mark.parametrize("given_h0", [False, True])
@pytest.mark.parametrize("tcls,lcls,kw,expansion", MODULES)
def test_module_matches_mincore_layers(tcls, lcls, kw, expansion, given_h0, T):
    """Same parameters (copied) give the same y, h_last and gradients (x, h0 and every parameter) as
    the mincore.layers module, in float64; step over the sequence reproduces forward."""
    torch.manual_seed(T)
    tm = tcls(4, expansion, dtype=torch.float64, **kw)
    if tm.h0 is not None:
        torch.nn.init.normal_(tm.h0, 0.3)  # zeros at init: make the learned state matter
    ml = lcls(4, expansion, **kw)
    copy_into_layer(tm, ml)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((3, T, 4))
    width = 2 * tm.N if tcls is mt.LRU else tm.inner
    h0 = rng.uniform(0.1, 1.0, (3, width)) if given_h0 else None
    tx, th0 = torch.tensor(x, requires_grad=True), None if h0 is None else torch.tensor(h0, requires_grad=True)
    y, h_last = tm(tx, th0)
    lx, lh0 = Tensor(x, requires_grad=True), None if h0 is None else Tensor(h0, requires_grad=True)
    ly, lh_last = ml.forward(lx, lh0)
    np.testing.assert_allclose(y.detach().numpy(), ly.data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_last.detach().numpy(), lh_last.data, rtol=1e-12, atol=1e-14)
    dy, dl = rng.standard_normal(y.shape), rng.standard_normal(h_last.shape)
    ((y * torch.from_numpy(dy)).sum() + (h_last * torch.from_numpy(dl)).sum()).backward()
    ((ly * Tensor(dy)).sum() + (lh_last * Tensor(dl)).sum()).backward()
    np.testing.assert_allclose(tx.grad.numpy(), lx.grad, rtol=1e-10, atol=1e-13)
    if given_h0:
        np.testing.assert_allclose(th0.grad.numpy(), lh0.grad, rtol=1e-10, atol=1e-13)
    for name, p in tm.named_parameters():
        got = np.zeros(p.shape) if p.grad is None else p.grad.numpy()  # None: unused (T = 0, h0 given)
        np.testing.assert_allclose(got, layer_grad(ml, name), rtol=1e-10, atol=1e-13, err_msg=name)

    state, ys = th0, []
    for t in range(T):
        y_t, state = tm.step(tx[:, t], state)
        ys.append(y_t)
    if T:
        torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(state, h_last, rtol=1e-12, atol=1e-13)


def test_module_float32_and_chunks():
    """float32 modules (torch's default dtype), and a sequence in two chunks carrying h_last equals
    the whole sequence."""
    torch.manual_seed(0)
    for m in (mt.MinGRU(6, 2.0, learn_h0=True), mt.MinLSTM(6), mt.LRU(6)):
        x = torch.randn(2, 20, 6)
        y, h = m(x)
        assert y.dtype == torch.float32 and y.shape == x.shape
        y1, h1 = m(x[:, :7])
        y2, h2 = m(x[:, 7:], h1)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h2, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("expansion", [1.0, 1.5])
@pytest.mark.parametrize("with_prev", [False, True])
def test_mingru_matches_mingru_pytorch(expansion, with_prev, T):
    """lucidrains' minGRU-pytorch (log-space minGRU, the paper's appendix B.3) with copied weights:
    same outputs, next hidden state and parameter gradients in float64. Its to_hidden_and_gate is
    [hidden | gate] without bias; mincore's to_hidden is [k | v] = [gate | hidden]."""
    mgp = pytest.importorskip("minGRU_pytorch")
    torch.manual_seed(T)
    ref = mgp.minGRU(6, expansion_factor=expansion).double()
    m = mt.MinGRU(6, expansion, log_space=True, bias=False, dtype=torch.float64)
    inner = m.inner
    with torch.no_grad():
        w = ref.to_hidden_and_gate.weight
        m.to_hidden.weight.copy_(torch.cat([w[inner:], w[:inner]]))
        if m.to_out is not None:
            m.to_out.weight.copy_(ref.to_out.weight)
    assert (m.to_out is None) == isinstance(ref.to_out, torch.nn.Identity)
    x = torch.randn(3, T, 6, dtype=torch.float64)
    prev = torch.rand(3, 1, inner, dtype=torch.float64) + 0.1 if with_prev else None
    y_ref, h_ref = ref(x, prev, return_next_prev_hidden=True)
    y, h_last = m(x, None if prev is None else prev[:, 0])
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_last, h_ref[:, 0], rtol=1e-10, atol=1e-12)
    dy = torch.randn_like(y)
    (y_ref * dy).sum().backward()
    (y * dy).sum().backward()
    gw = ref.to_hidden_and_gate.weight.grad
    torch.testing.assert_close(m.to_hidden.weight.grad, torch.cat([gw[inner:], gw[:inner]]), rtol=1e-9, atol=1e-11)
    if m.to_out is not None:
        torch.testing.assert_close(m.to_out.weight.grad, ref.to_out.weight.grad, rtol=1e-9, atol=1e-11)


def smoothing_batches(n=8, B=16, T=64):
    """n batches of x ~ N(0, 1) and the target y_t = 3 (0.8 y_{t-1} + 0.2 x_t) (unit variance), which
    every cell can represent exactly (a constant gate of 0.8)."""
    x = np.random.default_rng(1).standard_normal((n, B, T, 1)).astype(np.float32)
    y = 3 * mincore.scan(np.full((n * B, T, 1), 0.8, np.float32), 0.2 * x.reshape(n * B, T, 1))
    return list(zip(torch.from_numpy(x), torch.from_numpy(y.reshape(x.shape)), strict=True))


@pytest.mark.parametrize("cls,kw", [(mt.MinGRU, {}), (mt.MinGRU, {"log_space": True}), (mt.MinLSTM, {}),
                                    (mt.LRU, {})], ids=["mingru", "mingru-log", "minlstm", "lru"])
def test_small_model_trains(cls, kw):
    """Linear(1, 8) -> cell(8) -> Linear(8, 1), Adam (lr 0.03): the MSE on exponential smoothing, about
    1 at the start (the target's variance), falls below 0.01 in 200 steps of (16, 64) batches."""
    torch.manual_seed(0)
    inp, cell, head = torch.nn.Linear(1, 8), cls(8, **kw), torch.nn.Linear(8, 1)
    params = [*inp.parameters(), *cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.03)
    data, losses = smoothing_batches(), []
    for i in range(200):
        x, y = data[i % len(data)]
        loss = torch.nn.functional.mse_loss(head(cell(inp(x))[0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.5 and max(losses[-10:]) < 0.01, (losses[0], losses[-10:])



def test_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) with the default backend (inductor, which compiles C++ here) of
    a small model using MinGRU: no graph break, same loss and gradients as eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), Recurrent(mt.MinGRU(8, 1.5, log_space=True, learn_h0=True)),
                                torch.nn.Linear(8, 2)).double()
    x = torch.randn(2, 11, 3, dtype=torch.float64)

    def loss_fn(x):
        return model(x).square().mean()

    eager = loss_fn(x)
    grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(loss_fn, fullgraph=True)(x)
    cgrads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=0)
    for g, cg in zip(grads, cgrads, strict=True):
        torch.testing.assert_close(cg, g, rtol=1e-10, atol=1e-14)


class Recurrent(torch.nn.Module):
    """A recurrent module as a Sequential stage: y only."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        return self.cell(x)[0]


# ------------------------------------------------------------------------------ docs
def test_interop_pytorch_examples_run():
    """docs/INTEROP.md's PyTorch section: every Python block runs as printed."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "INTEROP.md").read_text()
    section = text.split("## PyTorch", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/INTEROP.md lost its PyTorch example"
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/INTEROP.md PyTorch block {i + 1}", "exec"), {"__name__": "__interop__"})
