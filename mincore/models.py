"""SequenceModel: the residual stack the three tasks train (Feng et al. 2024, sec. 4 and appendix C).

    x = Embedding(tokens) or Linear(inputs)
    N blocks:  [x = x + CausalConv1d(x)]            (optional, kernel K; the Shakespeare model)
               x = x + Dropout(RNN(Norm(x)))          (pre-norm residual; RNN in mingru|minlstm|lru)
               [x = x + MLP(Norm(x))]                 (optional GELU MLP with its own dropout)
    y = Head(Norm(x))

forward(x, state=None) -> (y, state) over whole sequences; step(x_t, state) -> (y_t, state) one time
step at a time, in constant memory. A state is a list with one (conv_prefix, h) pair per block:
conv_prefix holds the block's last K-1 conv inputs (None without conv), h the recurrent state. Passing
the state returned by one chunk into the next makes chunked evaluation equal one pass.
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import Tensor, as_tensor, nn, no_grad, optim
from mincore.layers import LRU, MinGRU, MinLSTM

__all__ = ["SequenceModel", "Block", "LRU_SLOW", "lru_param_groups", "contiguous"]

_CELLS = {"mingru": MinGRU, "minlstm": MinLSTM, "lru": LRU}
_NORMS = {"rms": nn.RMSNorm, "layer": nn.LayerNorm}
# the LRU parameters trained at a smaller lr and without weight decay (Orvieto et al. 2023, sec. 3 and
# appendix: "the smaller lr and no decay on nu, theta, gamma, B")
LRU_SLOW = ("nu_log", "theta_log", "gamma_log", "B")


def lru_param_groups(model, weight_decay: float, lr: float, lru_lr_factor: float = 1.0, no_decay=()) -> list[dict]:
    """AdamW groups of `model` (a Module): decay on the weight matrices; none on the names in `no_decay`
    and the parameters flagged Parameter.no_decay (biases, norms, ...); and the nu_log, theta_log,
    gamma_log and B of every LRU in it in a group of their own, at lr * lru_lr_factor, without decay.
    Without an LRU: optim.param_groups."""
    slow = [getattr(m, name) for m in model.modules() if isinstance(m, LRU) for name in LRU_SLOW]
    ids = {id(p) for p in slow}
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in ids]
    groups = optim.param_groups(rest, weight_decay, no_decay)
    if slow:
        groups.append({"params": slow, "weight_decay": 0.0, "lr": lr * lru_lr_factor})
    return groups


def contiguous(module):
    """`module` with every parameter C-contiguous. The LRU's C starts in the transposed layout, and a
    checkpoint loads it C-contiguous: small GEMMs round differently on the two layouts, so a resumed
    run would drift from the uninterrupted one in the last bits. One layout from the start keeps them equal."""
    for p in module.parameters():
        p.data = np.ascontiguousarray(p.data)
    return module


def _pick(table, name, what):
    if name not in table:
        raise ValueError(f"{what}: unknown {name!r}; expected one of {sorted(table)}")
    return table[name]


class Block(nn.Module):
    """One residual block (see the module docstring)."""

    def __init__(self, d_model, *, cell="mingru", expansion=1.0, norm="rms", conv_kernel=0, mlp=False,
                 mlp_hidden=None, dropout=0.0, cell_kw=None, engine=None, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        Norm = _pick(_NORMS, norm, "norm")
        seed = lambda: np.random.default_rng(rng.integers(2**63))  # noqa: E731 - independent streams
        self.conv = nn.CausalConv1d(d_model, conv_kernel, rng=rng) if conv_kernel else None
        self.norm1 = Norm(d_model)
        rnn = _pick(_CELLS, cell, "cell")(d_model, expansion, engine=engine, rng=rng, **(cell_kw or {}))
        self.rnn = contiguous(rnn)
        self.drop = nn.Dropout(dropout, rng=seed())
        self.norm2 = Norm(d_model) if mlp else None
        self.mlp = nn.MLP(d_model, mlp_hidden, dropout, rng=rng) if mlp else None

    def forward(self, x, state=None):
        prefix, h0 = state if state is not None else (None, None)
        if self.conv is not None:
            c, prefix = self.conv(x, prefix)
            x = x + c
        y, h = self.rnn(self.norm1(x), h0)
        x = x + self.drop(y)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, (prefix, h)

    @no_grad()
    def step(self, x_t, state=None):
        prefix, h = state if state is not None else (None, None)
        if self.conv is not None:
            c, prefix = self.conv(x_t[:, None], prefix)
            x_t = x_t + c[:, 0]
        y, h = self.rnn.step(self.norm1(x_t), h)
        x_t = x_t + self.drop(y)
        if self.mlp is not None:
            x_t = x_t + self.mlp(self.norm2(x_t))
        return x_t, (prefix, h)


class SequenceModel(nn.Module):
    """Token (vocab_size) or vector (d_input) sequences -> (B, T, d_output).

    cell: "mingru" | "minlstm" | "lru"; norm: "rms" | "layer"; conv_kernel: 0 for none;
    cell_kw: extra layer options (log_space, normalize, learn_h0, r_min, r_max, ...).
    """

    def __init__(self, *, d_model, d_output, vocab_size=None, d_input=None, n_layers=3, cell="mingru",
                 expansion=1.0, norm="rms", conv_kernel=0, mlp=False, mlp_hidden=None, dropout=0.0,
                 cell_kw=None, engine=None, seed=0):
        if (vocab_size is None) == (d_input is None):
            raise ValueError("SequenceModel: give exactly one of vocab_size (tokens) or d_input (vectors)")
        rng = np.random.default_rng(seed)
        self.tokens = vocab_size is not None
        self.embed = (nn.Embedding(vocab_size, d_model, rng=rng) if self.tokens
                      else nn.Linear(d_input, d_model, rng=rng))
        self.blocks = [Block(d_model, cell=cell, expansion=expansion, norm=norm, conv_kernel=conv_kernel,
                             mlp=mlp, mlp_hidden=mlp_hidden, dropout=dropout, cell_kw=cell_kw,
                             engine=engine, rng=rng) for _ in range(n_layers)]
        self.norm = _pick(_NORMS, norm, "norm")(d_model)
        self.head = nn.Linear(d_model, d_output, rng=rng)

    def _embed(self, x):
        if self.tokens:
            return self.embed(x.data if isinstance(x, Tensor) else x)
        return self.embed(as_tensor(x))

    def forward(self, x, state=None):
        """x: (B, T) integer tokens or (B, T, d_input) floats -> ((B, T, d_output), state)."""
        h = self._embed(x)
        state = state if state is not None else [None] * len(self.blocks)
        new = []
        for blk, s in zip(self.blocks, state, strict=True):
            h, s = blk(h, s)
            new.append(s)
        return self.head(self.norm(h)), new

    @no_grad()
    def step(self, x_t, state=None):
        """x_t: (B,) tokens or (B, d_input) -> ((B, d_output), state)."""
        h = self._embed(x_t)
        state = state if state is not None else [None] * len(self.blocks)
        new = []
        for blk, s in zip(self.blocks, state, strict=True):
            h, s = blk.step(h, s)
            new.append(s)
        return self.head(self.norm(h)), new

    def no_decay_names(self) -> list[str]:
        """Parameters AdamW should not decay: biases, norm gains, learned initial states and the
        LRU's nu_log / theta_log / gamma_log / B / D (Orvieto et al. 2023, appendix)."""
        return [n for n, p in self.named_parameters() if p.no_decay]

    def param_groups(self, weight_decay: float, **group_kw) -> list[dict]:
        """AdamW parameter groups: decay on the weight matrices, none on `no_decay_names()`."""
        return optim.param_groups(self.named_parameters(), weight_decay, self.no_decay_names(), **group_kw)
