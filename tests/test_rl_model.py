"""Decision-minRNN: token-by-token (carried state) equals the parallel forward; a tiny overfit."""

import numpy as np
import pytest

from mincore.autograd import F, optim
from mincore.tasks.rl.model import BCMLP, DecisionRNN


def _window(rng, B=3, K=5, obs=4, act=2):
    return (rng.standard_normal((B, K, 1)).astype(np.float32), rng.standard_normal((B, K, obs)).astype(np.float32),
            rng.uniform(-1, 1, (B, K, act)).astype(np.float32), rng.integers(0, 50, (B, K)))


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_step_mode_matches_parallel(cell):
    rng = np.random.default_rng(0)
    rtg, s, a, t = _window(rng)
    model = DecisionRNN(4, 2, d_model=16, cell=cell, max_timestep=50, seed=1)
    model.eval()
    want = model(rtg, s, a, t).data
    state = None
    for k in range(t.shape[1]):
        got, state = model.act_step(rtg[:, k], s[:, k], t[:, k], state)
        np.testing.assert_allclose(got, want[:, k], rtol=1e-4, atol=1e-5)
        state = model.push_action(a[:, k], t[:, k], state)


def test_causal():
    """The action at step k does not depend on anything after the state token of step k."""
    rng = np.random.default_rng(1)
    rtg, s, a, t = _window(rng, B=1)
    model = DecisionRNN(4, 2, d_model=16, max_timestep=50)
    model.eval()
    base = model(rtg, s, a, t).data
    a2 = a.copy()
    a2[:, 2:] += 1.0  # a_2 enters after s_2's token
    np.testing.assert_allclose(model(rtg, s, a2, t).data[:, :3], base[:, :3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mingru", "bc"])
def test_tiny_overfit(kind):
    rng = np.random.default_rng(2)
    rtg, s, a, t = _window(rng, B=4, K=6)
    a = 0.8 * a
    model = BCMLP(4, 2, hidden=64, dropout=0.0) if kind == "bc" else \
        DecisionRNN(4, 2, d_model=32, dropout=0.0, max_timestep=50)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(40):
        opt.zero_grad()
        pred = model(s) if kind == "bc" else model(rtg, s, a, t)
        loss = F.mse(pred, a)
        loss.backward()
        opt.step()
    assert loss.item() < 0.01, loss.item()
