"""Selective copying (Gu & Dao 2023, sec. 3.1; Feng et al. 2024, sec. 4.1 and appendix C).

A sequence of L tokens from a vocabulary of 16: noise token 15 everywhere except N data tokens
(drawn uniformly from 1..14) at random sorted positions among the first L - N, then N marker tokens 0.
At the N marker positions the model must output the N data tokens in order; loss and accuracy count
those N positions only. Training batches are drawn on the fly from a seeded numpy Generator, each at
seq_len or at one length drawn from train_lens (shorter sequences: fewer noise tokens); the held-out
set is a fixed set of sequences at seq_len from a separate seed (a random sequence of the default size
repeats one of them with probability below 1e-20, so held-out means never trained on).

Model (the paper's): embedding -> n_layers pre-norm residual minRNN blocks (RMSNorm, minGRU or
minLSTM with expansion, dropout; no conv, no MLP) -> RMSNorm -> linear head; `--model lru` puts the
LRU (Orvieto et al. 2023, N = expansion * d_model complex states) in the blocks instead, its nu, theta,
gamma and B at lr * lru_lr_factor without weight decay. Only the N marker positions are scored, so
the last block's output projection, the final norm and the head run on those positions alone: the
same numbers as the full model, with fewer multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mincore.autograd import F, nn, no_grad, ops
from mincore.autograd.distributed import world
from mincore.layers import LRU, lru_op
from mincore.models import Block, lru_param_groups

from . import loop
from .config import LoopConfig

__all__ = ["CopyConfig", "PRESETS", "MODELS", "THREADS", "OPTIONS", "NOISE", "MARKER", "make_batch", "CopyModel",
           "CopyTask", "Task", "config", "from_dict", "train", "describe"]

NOISE, MARKER = 15, 0  # the official data's tokens; data tokens are 1 .. vocab - 2
MODELS = ("mingru", "minlstm", "lru")
# CPU threads `mincore train` uses unless --threads says otherwise: the model is small (batch 32 x 48
# steps x width 384), so a second thread mostly adds synchronisation (300 steps: 33 s on one thread, 84 s
# on two, shared 2-core machine)
THREADS = 1
OPTIONS = ()  # no settings of its own on the `mincore train` command line


@dataclass(frozen=True)
class CopyConfig(LoopConfig):
    model: str = "mingru"            # recurrent cell: mingru | minlstm | lru
    seq_len: int = 64                # L: tokens per sequence, markers included (data region L - N)
    train_lens: tuple = ()           # training batches' L, one drawn per batch (); (): seq_len. Held-out: seq_len
    n_data: int = 16                 # N: data tokens to copy, in order
    vocab: int = 16                  # tokens: marker 0, data 1 .. vocab-2, noise vocab-1
    d_model: int = 64                # residual stream width
    expansion: float = 6.0           # recurrent state width = expansion * d_model
    n_layers: int = 3                # residual minRNN blocks
    dropout: float = 0.1             # after each recurrent layer (training only)
    eval_size: int = 1024            # held-out sequences
    eval_batch: int = 256            # held-out sequences per forward pass
    eval_seed: int = 20240917        # seed of the held-out set (its own stream, never trained on)
    lru_lr_factor: float = 0.5       # lru: lr of nu, theta, gamma, B relative to lr (Orvieto et al.: 0.1-0.5)

    def validate(self):
        super().validate()
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.vocab < 3 or self.n_data < 1 or self.seq_len < 2 * self.n_data:
            raise ValueError(f"need vocab >= 3, n_data >= 1 and seq_len >= 2 * n_data; got vocab "
                             f"{self.vocab}, n_data {self.n_data}, seq_len {self.seq_len}")
        if any(not isinstance(n, int) or n < 2 * self.n_data for n in self.train_lens):
            raise ValueError(f"train_lens must hold integers >= 2 * n_data = {2 * self.n_data}, got "
                             f"{self.train_lens!r}")
        if min(self.d_model, self.n_layers, self.eval_size, self.eval_batch) < 1 or self.expansion <= 0:
            raise ValueError("d_model, n_layers, eval_size, eval_batch and expansion must be positive")
        if not 0 < self.lru_lr_factor <= 1:
            raise ValueError(f"lru_lr_factor must be in (0, 1], got {self.lru_lr_factor}")


PRESETS = {
    # 2-core CPU, a few minutes: the paper's model and N = 16, scored at L = 48 (16 data tokens among 32
    # random positions, then 16 markers); batch 32, peak lr 1e-2 with warmup + cosine decay, no dropout.
    # Measured (docs/COPY_TASK.md): L = 48 learns faster per step than L = 64 and costs 25% less; batch
    # 32 beat batch 64 per sequence seen; training batches of L = 32..48 (one length per batch) reach
    # 99.8% in 4000 steps where L = 48 alone reaches 99.6% at 13% more CPU time; dropout 0.1 cost
    # ~1 point at the end (every batch is new data, so there is nothing to overfit); lr 1e-2 beat 6e-3.
    "default": CopyConfig(seq_len=48, train_lens=(32, 36, 40, 44, 48), n_data=16, batch_size=32, steps=4000,
                          lr=1e-2, warmup=200, dropout=0.0, eval_every=500),
    # Feng et al. 2024 (released config): L = 4096, N = 16, batch 64 as two micro-batches of 32,
    # AdamW lr 3e-4, weight decay 0.05 (not on gate projections, biases, norms), clip 1.0,
    # up to 400k steps, early stopping after 10 evaluations without a better accuracy.
    "paper": CopyConfig(seq_len=4096, n_data=16, batch_size=64, micro_batch=32, steps=400_000, lr=3e-4,
                        warmup=1000, min_lr_factor=0.1, weight_decay=0.05, eval_every=2000, log_every=50,
                        patience=10, eval_size=1024, eval_batch=64),
}


def make_batch(rng, size: int, seq_len: int, n_data: int, vocab: int = 16):
    """(x (size, seq_len) int64 tokens, y (size, n_data) int64 targets = the data tokens in order)."""
    region = seq_len - n_data
    keys = rng.random((size, region))
    pos = np.sort(np.argpartition(keys, n_data - 1, axis=1)[:, :n_data], axis=1)  # N distinct, sorted
    y = rng.integers(1, vocab - 1, (size, n_data))
    x = np.full((size, seq_len), vocab - 1, np.int64)
    np.put_along_axis(x, pos, y, axis=1)
    x[:, region:] = MARKER
    return x, y.astype(np.int64)


class CopyModel(nn.Module):
    """Embedding -> blocks -> RMSNorm -> head; forward(x, n_out) returns logits (B, n_out, vocab) for
    the last n_out positions only."""

    def __init__(self, cfg: CopyConfig):
        rng = np.random.default_rng(cfg.seed)
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model, rng=rng)
        self.blocks = [Block(cfg.d_model, cell=cfg.model, expansion=cfg.expansion, norm="rms",
                             dropout=cfg.dropout, engine=cfg.engine, rng=rng) for _ in range(cfg.n_layers)]
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, rng=rng)

    def forward(self, x, n_out: int):
        blocks = self.blocks
        h = self.embed(x)
        h = self._first_block(blocks[0], x, h) if len(blocks) > 1 else h
        for blk in blocks[1:-1]:
            h, _ = blk(h)
        # last block, x + Dropout(RNN(Norm(x))), with the RNN's output projection on n_out positions
        blk = blocks[-1]
        return self.head(self.norm(h[:, -n_out:] + blk.drop(_last_outputs(blk.rnn, blk.norm1(h), n_out))))

    def _first_block(self, blk, x, h):
        """The first block's input is an embedding row, so Norm + input projection depend on the token
        alone: the layer projects the (vocab, d) table once and gathers rows (scan_lookup) instead of a
        GEMM over every position; the table's gradient reaches the embedding through the same tape.
        The LRU has no scan_lookup: its block runs as it is."""
        if isinstance(blk.rnn, LRU):
            return blk(h)[0]
        s = blk.rnn.scan_lookup(blk.norm1(self.embed.weight), x)
        return h + blk.drop(blk.rnn.out(s))


def _last_outputs(rnn, u, n_out):
    """rnn(u)[0][:, -n_out:], with the output projection (the LRU's C and D) on those positions only."""
    if isinstance(rnn, LRU):
        h = lru_op(u, rnn.B, rnn.nu_log, rnn.theta_log, rnn.gamma_log, None, engine=rnn.engine)[:, -n_out:]
        return ops.linear(h, rnn.C) + u[:, -n_out:] * rnn.D
    return rnn.out(rnn.scan(u)[:, -n_out:])


class CopyTask:
    """The selective-copying task for mincore.tasks.loop.train."""

    metric, higher_is_better = "accuracy", True

    def __init__(self, cfg: CopyConfig):
        cfg.validate()
        self.cfg = cfg
        self.model, self.xp = CopyModel(cfg), np
        self.eval_x, self.eval_y = make_batch(np.random.default_rng((cfg.eval_seed, 2)), cfg.eval_size, cfg.seq_len,
                                              cfg.n_data, cfg.vocab)

    def param_groups(self):
        # no decay on biases, norm gains and the recurrent layers' gate projections (to_hidden:
        # the gates and the candidate share its matrix), as for the LRU's recurrent parameters,
        # which also get the smaller lr (lru_param_groups)
        c = self.cfg
        gates = [n for n, _ in self.model.named_parameters() if ".rnn.to_hidden." in n]
        return lru_param_groups(self.model, c.weight_decay, c.lr, c.lru_lr_factor, no_decay=gates)

    def batch(self, rng, size):
        """`size` training sequences of one length: seq_len, or one of train_lens drawn for the batch."""
        c = self.cfg
        seq_len = int(c.train_lens[rng.integers(len(c.train_lens))]) if c.train_lens else c.seq_len
        x, y = make_batch(rng, size, seq_len, c.n_data, c.vocab)
        return self.xp.asarray(x), self.xp.asarray(y)

    def loss(self, batch):
        x, y = batch
        logits = self.model(x, self.cfg.n_data)
        acc = float((logits.data.argmax(-1) == y).mean())
        return F.cross_entropy(logits, y), {"accuracy": acc}

    @no_grad()
    def evaluate(self) -> dict:
        """Mean cross entropy and accuracy over the N copied tokens of the held-out set, and the
        fraction of sequences copied without a mistake. Under MPI each rank scores its share of the
        batches and the sums are added over the ranks."""
        c, nll, hits, whole, ranks = self.cfg, 0.0, 0, 0, world()
        for i in ranks.split(range(0, c.eval_size, c.eval_batch)):
            x, y = (self.xp.asarray(a[i:i + c.eval_batch]) for a in (self.eval_x, self.eval_y))
            logits = self.model(x, c.n_data)
            nll += float(F.cross_entropy(logits, y).item()) * y.size
            right = logits.data.argmax(-1) == y
            hits, whole = hits + int(right.sum()), whole + int(right.all(axis=1).sum())
        nll, hits, whole = ranks.sum([nll, hits, whole])
        n = self.eval_y.size
        return {"loss": nll / n, "accuracy": hits / n, "sequence_accuracy": whole / c.eval_size}


Task = CopyTask
config, from_dict, train, describe = loop.task_functions("copy", CopyConfig, PRESETS, CopyTask)
