"""Decision-minGRU / Decision-minLSTM (Feng et al. 2024, sec. 4.2, after Decision Mamba / Decision
Transformer) and the behaviour-cloning MLP baseline.

Tokens, per time step t of a K-step window:  R_t (return-to-go), s_t (state), a_t (action)
    e(x) = Linear_x(x) + E_time[t]              (one linear embedding per token kind, shared timestep table)
    sequence R_1, s_1, a_1, R_2, s_2, a_2, ...    (B, 3K, d) -> LayerNorm -> Dropout
    3 blocks: x = x + minRNN(LN(x)); x = x + MLP(LN(x))    (pre-norm residual, mincore.models.Block)
    a^_t = tanh(Linear(LN(x at the s_t token)))   loss: MSE(a^_t, a_t) over real (mask 1) steps

The recurrence is causal, so a^_t sees R_1..R_t, s_1..s_t, a_1..a_{t-1} only. `act_step` /
`push_action` run the same network one token at a time, carrying each block's recurrent state;
over one window from a zero state they give the parallel forward's actions (tests/test_rl_model.py).
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import as_tensor, nn, no_grad, ops
from mincore.models import Block

__all__ = ["DecisionRNN", "BCMLP"]


class DecisionRNN(nn.Module):
    def __init__(self, obs_dim, act_dim, *, d_model=128, n_layers=3, cell="mingru", expansion=1.0,
                 dropout=0.1, max_timestep=1000, engine=None, seed=0):
        rng = np.random.default_rng(seed)
        self.d, self.act_dim = d_model, act_dim
        self.embed_t = nn.Embedding(max_timestep, d_model, rng=rng)
        self.embed_rtg = nn.Linear(1, d_model, rng=rng)
        self.embed_state = nn.Linear(obs_dim, d_model, rng=rng)
        self.embed_action = nn.Linear(act_dim, d_model, rng=rng)
        self.ln = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout, rng=np.random.default_rng(rng.integers(2**63)))
        self.blocks = [Block(d_model, cell=cell, expansion=expansion, norm="layer", mlp=True,
                             mlp_hidden=4 * d_model, dropout=dropout, engine=engine, rng=rng)
                       for _ in range(n_layers)]
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, act_dim, rng=rng)

    def _tokens(self, rtg, states, actions, timesteps):
        t = self.embed_t(timesteps)
        r = self.embed_rtg(as_tensor(rtg)) + t
        s = self.embed_state(as_tensor(states)) + t
        a = self.embed_action(as_tensor(actions)) + t
        B, K = timesteps.shape
        return self.drop(self.ln(ops.stack([r, s, a], axis=2).reshape(B, 3 * K, self.d)))

    def forward(self, rtg, states, actions, timesteps):
        """rtg (B, K, 1), states (B, K, obs), actions (B, K, act), timesteps (B, K) ints
        -> predicted actions (B, K, act), each from its state token."""
        x = self._tokens(rtg, states, actions, timesteps)
        for blk in self.blocks:
            x, _ = blk(x)
        B, K = timesteps.shape
        x = x.reshape(B, K, 3, self.d)[:, :, 1]
        return ops.tanh(self.head(self.norm(x)))

    def _push(self, emb, t, state):
        x = self.ln(emb + self.embed_t(t))
        state = state if state is not None else [None] * len(self.blocks)
        new = []
        for blk, s in zip(self.blocks, state, strict=True):
            x, s = blk.step(x, s)
            new.append(s)
        return x, new

    @no_grad()
    def act_step(self, rtg_t, s_t, t, state=None):
        """Feed R_t (B, 1) then s_t (B, obs) at timesteps t (B,): (action (B, act) array, state)."""
        _, state = self._push(self.embed_rtg(as_tensor(rtg_t)), t, state)
        x, state = self._push(self.embed_state(as_tensor(s_t)), t, state)
        return ops.tanh(self.head(self.norm(x))).data, state

    @no_grad()
    def push_action(self, a_t, t, state):
        """Feed the action actually taken, a_t (B, act), so the next step's tokens follow it."""
        return self._push(self.embed_action(as_tensor(a_t)), t, state)[1]


class BCMLP(nn.Module):
    """Behaviour cloning: a = tanh(MLP(s)), MLP = Linear -> ReLU -> Linear -> ReLU -> Linear."""

    def __init__(self, obs_dim, act_dim, *, hidden=256, dropout=0.1, seed=0):
        rng = np.random.default_rng(seed)
        self.fc1 = nn.Linear(obs_dim, hidden, rng=rng)
        self.fc2 = nn.Linear(hidden, hidden, rng=rng)
        self.head = nn.Linear(hidden, act_dim, rng=rng)
        self.drop = nn.Dropout(dropout, rng=np.random.default_rng(rng.integers(2**63)))

    def forward(self, states):
        h = self.drop(ops.relu(self.fc1(as_tensor(states))))
        h = self.drop(ops.relu(self.fc2(h)))
        return ops.tanh(self.head(h))
