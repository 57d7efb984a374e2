"""Optional cross-check against PyTorch: the layers' equations written as plain sequential torch code
(torch's own autograd for the gradients) must agree with mincore's kernels + VJPs. Skipped where
torch is not installed (pip install torch: a CPU wheel suffices)."""

from __future__ import annotations

import numpy as np
import pytest

from mincore.autograd import F, Tensor, ops
from mincore.layers import LRU, MinGRU, MinLSTM

torch = pytest.importorskip("torch")


def g_torch(v):
    """The paper's positive activation g (appendix B)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def torch_min_rnn(layer, x, h0, kind):
    W, b = layer.to_hidden.weight, layer.to_hidden.bias
    pre = x @ W + b
    n = 2 if kind == "gru" else 3
    parts = list(torch.split(pre, pre.shape[-1] // n, dim=-1))
    v = g_torch(parts[-1]) if layer.log_space else parts[-1]
    if kind == "gru":
        z = torch.sigmoid(parts[0])
        a, bcoef = 1 - z, z * v
    else:
        f, i = torch.sigmoid(parts[0]), torch.sigmoid(parts[1])
        if layer.normalize:
            f, i = f / (f + i), i / (f + i)
        a, bcoef = f, i * v
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = a[:, t] * h + bcoef[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    y = hs @ layer.to_out.weight if layer.to_out is not None else hs
    return y, h


def torch_lru(layer, x, h0):
    N = layer.N
    lam = torch.exp(-torch.exp(layer.nu_log) + 1j * torch.exp(layer.theta_log))
    Bu = torch.exp(layer.gamma_log) * torch.complex(x @ layer.B[:, 0::2], x @ layer.B[:, 1::2])
    h, hs = torch.complex(h0[:, 0::2], h0[:, 1::2]), []
    for t in range(x.shape[1]):
        h = lam * h + Bu[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    y = hs.real @ layer.C[0::2] + hs.imag @ layer.C[1::2] + layer.D * x
    return y, torch.stack([h.real, h.imag], -1).reshape(h.shape[0], 2 * N)


class TorchParams:
    """The layer's parameters as torch leaves, reachable by attribute path (to_hidden.weight...)."""

    def __init__(self, layer):
        self.leaves = {n: torch.tensor(p.data, requires_grad=True) for n, p in layer.named_parameters()}
        self.layer = layer

    def __getattr__(self, name):
        if name in ("to_hidden", "to_out"):
            sub = getattr(self.layer, name)
            if sub is None:
                return None
            ns = type("P", (), {})()
            for k in ("weight", "bias"):
                setattr(ns, k, self.leaves.get(f"{name}.{k}"))
            return ns
        if name in self.leaves:
            return self.leaves[name]
        return getattr(self.layer, name)


@pytest.mark.parametrize("kind,kw", [("gru", {}), ("gru", {"log_space": True}), ("lstm", {}),
                                     ("lstm", {"normalize": False}), ("lru", {})])
def test_layer_matches_torch(kind, kw):
    cls = {"gru": MinGRU, "lstm": MinLSTM, "lru": LRU}[kind]
    layer = cls(4, 2.0, rng=np.random.default_rng(0), **kw).to(dtype=np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 13, 4))
    width = 2 * layer.N if kind == "lru" else layer.inner
    h0 = np.abs(rng.standard_normal((2, width)))
    u, uh = rng.standard_normal((2, 13, 4)), rng.standard_normal((2, width))

    xt, h0t = Tensor(x, requires_grad=True), Tensor(h0, requires_grad=True)
    y, h = layer(xt, h0t)
    ((y * u).sum() + (h * uh).sum()).backward()

    tp = TorchParams(layer)
    xq, h0q = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    yq, hq = torch_lru(tp, xq, h0q) if kind == "lru" else torch_min_rnn(tp, xq, h0q, kind)
    ((yq * torch.tensor(u)).sum() + (hq * torch.tensor(uh)).sum()).backward()

    np.testing.assert_allclose(y.data, yq.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xt.grad, xq.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h0t.grad, h0q.grad.numpy(), rtol=1e-9, atol=1e-11)
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, tp.leaves[n].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=n)


def test_fused_ops_match_torch():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 5, 6)), rng.standard_normal(6), rng.standard_normal(6)
    tq, tf = torch.tensor(x), torch.nn.functional
    want = tf.layer_norm(tq, (6,), torch.tensor(w), torch.tensor(b)).numpy()
    got = F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    want = tf.gelu(tq, approximate="tanh").numpy()
    np.testing.assert_allclose(ops.gelu(Tensor(x)).data, want, rtol=1e-10, atol=1e-12)
    t = rng.integers(0, 6, (3, 5))
    t[0, :2] = -100
    want = tf.cross_entropy(tq.reshape(-1, 6), torch.tensor(t).reshape(-1), ignore_index=-100).numpy()
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t).data, want, rtol=1e-10)
