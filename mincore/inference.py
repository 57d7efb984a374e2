"""Fused recurrent inference: every block's step of a SequenceModel in one compiled call per token.

A model's `step` runs each norm, product, gate and residual as its own array operation, so a token
of the default Shakespeare model costs a few hundred Python-level operations, nearly all overhead.
`FusedStepper` copies the weights once into one flat array with a table of offsets
(mincore/inference_jit.py runs it) and runs a whole token, embedding to logits, in one numba call;
`generate_tokens` also draws the samples inside it, chunk by chunk.

    stepper = FusedStepper.from_model(model)      # Unsupported (a ValueError) says why it cannot
    S = stepper.state(model_state, batch)         # the model's state list (or None) -> (B, width)
    logits = stepper.step(tokens, S)              # = model.step(tokens, state)[0]; S updated in place
    model_state = stepper.model_state(S)          # back to the model's form

The stepper holds a copy of the weights taken when it is built: build it again after training.
Supported: mincore.models.Block stacks with the causal conv or none, RMSNorm or LayerNorm, MinGRU /
MinLSTM (log_space, normalize, learned h0, with or without the output projection) or the LRU, the
GELU MLP or none, on NumPy float32 / float64 parameters in eval mode (dropout is the identity).
Anything else raises Unsupported; the callers (mincore generate, the RL rollouts) then use
model.step and say why.
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import Tensor, nn
from mincore.layers import LRU, MinGRU, MinLSTM
from mincore.models import Block

__all__ = ["Unsupported", "FusedStepper", "fused_stepper"]


class Unsupported(ValueError):
    """The fused step cannot run this model; the message says why (use model.step instead)."""


class _Pack:
    """Arrays appended into one flat array; add() returns each one's offset (-1 for None)."""

    def __init__(self, dtype):
        self.dtype, self.parts, self.size = dtype, [], 0

    def add(self, a) -> int:
        if a is None:
            return -1
        a = np.asarray(a.data if isinstance(a, Tensor) else a, self.dtype).reshape(-1)
        self.parts.append(a)
        self.size += a.size
        return self.size - a.size

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(1, self.dtype)


def _check_params(modules):
    """The one float dtype of every parameter, or Unsupported (CuPy arrays, mixed or other dtypes)."""
    dtypes = set()
    for m in modules:
        for name, p in m.named_parameters():
            if type(p.data) is not np.ndarray:
                raise Unsupported(f"parameter {name} is a {type(p.data).__module__} array; the fused step runs "
                                  f"on NumPy arrays (CPU)")
            dtypes.add(p.data.dtype)
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise Unsupported(f"parameters of dtype {sorted(map(str, dtypes))}; the fused step takes one of "
                          f"float32, float64")
    return next(iter(dtypes))


def _check_dropout(m, where):
    if m is not None and m.training and m.p > 0:
        raise Unsupported(f"{where}: dropout {m.p} is active (training mode); call model.eval() first")


def _norm(pk, norm, where):
    from mincore.inference_jit import LAYER, RMS

    if type(norm) not in (nn.RMSNorm, nn.LayerNorm):
        raise Unsupported(f"{where}: a {type(norm).__name__}; the fused step takes RMSNorm or LayerNorm")
    kind = RMS if type(norm) is nn.RMSNorm else LAYER
    return [kind, pk.add(norm.weight), pk.add(getattr(norm, "bias", None)), pk.add(np.array([norm.eps]))]


def _rnn(pk, rnn, slots, where):
    """The cell's slots of a block; returns the widths of its state and of its products."""
    from mincore import inference_jit as J

    if type(rnn) is LRU:
        gamma = np.repeat(np.exp(rnn.gamma_log.data), 2)  # folded into B, as the parallel forward does
        lam = rnn.lam().astype(np.result_type(pk.dtype, np.complex64)).view(pk.dtype)
        slots.update({J.CELL: J.LRU, J.INNER: rnn.N, J.HID_W: pk.add(rnn.B.data * gamma), J.OUT_W: pk.add(rnn.C),
                      J.LAM: pk.add(lam), J.SKIP_D: pk.add(rnn.D)})
        return 2 * rnn.N, 2 * rnn.N
    if type(rnn) not in (MinGRU, MinLSTM):
        raise Unsupported(f"{where}: a {type(rnn).__name__}; the fused step takes MinGRU, MinLSTM or LRU")
    lin = rnn.to_hidden
    slots.update({J.CELL: J.GRU if type(rnn) is MinGRU else J.LSTM, J.INNER: rnn.inner, J.HID_W: pk.add(lin.weight),
                  J.HID_B: pk.add(lin.bias), J.LOG_SPACE: int(rnn.log_space),
                  J.NORMALIZE: int(getattr(rnn, "normalize", False)),
                  J.OUT_W: pk.add(None if rnn.to_out is None else rnn.to_out.weight)})
    return rnn.inner, rnn.n_pre * rnn.inner


def _block(pk, blk, d, at, where):
    """(the block's BLOCK slots, its state width, the scratch width it needs); its state at `at`."""
    from mincore import inference_jit as J

    if type(blk) is not Block:
        raise Unsupported(f"{where}: a {type(blk).__name__}; the fused step takes mincore.models.Block")
    _check_dropout(blk.drop, where)
    slots = dict.fromkeys(range(J.BLOCK), -1)
    slots.update({J.CONV_K: 0, J.MLP: 0, J.LOG_SPACE: 0, J.NORMALIZE: 0})
    width = 0
    if blk.conv is not None:
        if type(blk.conv) is not nn.CausalConv1d:
            raise Unsupported(f"{where}: conv is a {type(blk.conv).__name__}, not CausalConv1d")
        K = blk.conv.kernel_size
        slots.update({J.CONV_K: K, J.CONV_W: pk.add(blk.conv.weight), J.CONV_B: pk.add(blk.conv.bias), J.PREFIX: at})
        width += (K - 1) * d
    slots.update(enumerate(_norm(pk, blk.norm1, where + ".norm1"), J.NORM1))
    n_state, n_pre = _rnn(pk, blk.rnn, slots, where + ".rnn")
    slots[J.H] = at + width
    width += n_state
    scratch = max(d, n_pre, n_state)
    if blk.mlp is not None:
        if type(blk.mlp) is not nn.MLP:
            raise Unsupported(f"{where}: mlp is a {type(blk.mlp).__name__}; the fused step takes the GELU MLP")
        _check_dropout(blk.mlp.drop, where + ".mlp")
        m = blk.mlp
        slots.update(enumerate(_norm(pk, blk.norm2, where + ".norm2"), J.NORM2))
        slots.update({J.MLP: 1, J.FC1_W: pk.add(m.fc1.weight), J.FC1_B: pk.add(m.fc1.bias),
                      J.FC2_W: pk.add(m.fc2.weight), J.FC2_B: pk.add(m.fc2.bias), J.MLP_HIDDEN: m.fc1.weight.shape[1]})
        scratch = max(scratch, m.fc1.weight.shape[1])
    return [slots[i] for i in range(J.BLOCK)], width, scratch


class FusedStepper:
    """A whole token through `blocks` (mincore.models.Block) in one compiled call; with `embed` (an
    Embedding or a Linear) first, and `norm` and `head` after them, as in SequenceModel. Raises
    Unsupported for what it cannot run (see the module docstring)."""

    def __init__(self, blocks, *, embed=None, norm=None, head=None):
        from mincore import inference_jit as J

        blocks = list(blocks)
        parts = [m for m in (*blocks, embed, norm, head) if m is not None]
        if not blocks:
            raise Unsupported("blocks: expected at least one Block")
        if (norm is None) != (head is None):
            raise Unsupported("norm and head: give both or neither")
        self.dtype = _check_params(parts)
        pk = _Pack(self.dtype)
        self.blocks, self.embed, self.has_head = blocks, embed, head is not None
        self.d = d = blocks[0].norm1.weight.shape[0]
        L, width, state = [0] * J.HEAD, d, 0
        for i, blk in enumerate(blocks):
            slots, n, w = _block(pk, blk, d, state, f"blocks[{i}]")
            L += slots
            state, width = state + n, max(width, w)
        self.tokens = type(embed) is nn.Embedding
        if embed is not None and type(embed) not in (nn.Embedding, nn.Linear):
            raise Unsupported(f"embed: a {type(embed).__name__}; the fused step takes Embedding or Linear")
        L[J.EMBED] = pk.add(embed.weight) if self.tokens else -1
        # a Linear embed runs in NumPy before the call (on a copy, as every weight here)
        self._in = None if self.tokens or embed is None else (embed.weight.data.copy(), _copy(embed.bias))
        self.n_out = head.weight.shape[1] if head is not None else d
        if head is not None:
            if type(head) is not nn.Linear:
                raise Unsupported(f"head: a {type(head).__name__}; the fused step takes Linear")
            L[J.NORM:J.NORM + 4] = _norm(pk, norm, "norm")
            L[J.HEAD_W], L[J.HEAD_B] = pk.add(head.weight), pk.add(head.bias)
            width = max(width, self.n_out)
        L[J.N_BLOCKS], L[J.D], L[J.STATE], L[J.WIDTH], L[J.V_OUT] = len(blocks), d, state, width, self.n_out
        self.P, self.L, self.width = pk.array(), np.asarray(L, np.int64), state
        if self.tokens:  # the embedding table, a view of P
            self._table = self.P[L[J.EMBED]:L[J.EMBED] + embed.weight.size].reshape(-1, d)

    @classmethod
    def from_model(cls, model):
        """The stepper of a mincore.models.SequenceModel (step(x_t, S) = model.step(x_t, state)[0])."""
        return cls(model.blocks, embed=model.embed, norm=model.norm, head=model.head)

    def state(self, state=None, batch=1) -> np.ndarray:
        """The (batch, width) state array of a model state list (None: the initial state, zeros or
        the learned h0, as model.step starts from)."""
        S = np.zeros((batch, self.width), self.dtype)
        state = state if state is not None else [None] * len(self.blocks)
        if len(state) != len(self.blocks):
            raise ValueError(f"state: expected {len(self.blocks)} (prefix, h) pairs, got {len(state)}")
        at = 0
        for blk, s in zip(self.blocks, state, strict=True):
            prefix, h = s if s is not None else (None, None)
            n = (blk.conv.kernel_size - 1) * self.d if blk.conv is not None else 0
            if prefix is not None and n:
                S[:, at:at + n] = _host(prefix).reshape(batch, n)
            at += n
            h = h if h is not None else blk.rnn._h0(None, batch)  # the layer's own initial state
            w = 2 * blk.rnn.N if type(blk.rnn) is LRU else blk.rnn.inner
            if h is not None:
                S[:, at:at + w] = _host(h).reshape(batch, w)
            at += w
        return S

    def model_state(self, S) -> list:
        """The model's state list ((prefix, h) Tensors per block) of a state array."""
        out, at, B = [], 0, S.shape[0]
        for blk in self.blocks:
            K = blk.conv.kernel_size if blk.conv is not None else 1
            prefix = Tensor(S[:, at:at + (K - 1) * self.d].reshape(B, K - 1, self.d).copy()) if K > 1 else None
            at += (K - 1) * self.d
            w = 2 * blk.rnn.N if type(blk.rnn) is LRU else blk.rnn.inner
            out.append((prefix, Tensor(S[:, at:at + w].copy())))
            at += w
        return out

    def step(self, x_t, S, head=True) -> np.ndarray:
        """x_t: (B,) tokens (with an Embedding), (B, d_in) inputs (with a Linear embed) or (B, d)
        -> (B, n_out) head outputs (the residual stream (B, d) without a head, or with head=False).
        S (B, width) is updated in place."""
        from mincore import inference_jit as J

        x = _host(x_t)
        if self.tokens:
            x = self._table[x]
        elif self._in is not None:
            w, b = self._in
            x = x @ w + b if b is not None else x @ w
        X = np.ascontiguousarray(x, self.dtype)
        if X.ndim != 2 or X.shape[1] != self.d or S.shape != (X.shape[0], self.width) or S.dtype != self.dtype:
            raise ValueError(f"x_t, S: expected ({X.shape[0]}, {self.d}) inputs and a ({X.shape[0]}, "
                             f"{self.width}) {self.dtype} state, got {X.shape} and {S.shape} {S.dtype}")
        logits = np.empty((X.shape[0] if head and self.has_head else 0, self.n_out), self.dtype)
        _launch(X.shape[0], J.rows_serial, J.rows_parallel)(self.P, self.L, S, X, logits)
        return logits if logits.shape[0] else X


def _copy(p):
    return None if p is None else p.data.copy()


def _host(a) -> np.ndarray:
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _launch(batch, serial, parallel):
    """The serial entry point for batches of one tile or one thread, else the parallel one (under
    mincore's kernel lock: numba's workqueue layer aborts on concurrent launches)."""
    import numba

    from mincore.inference_jit import TILE
    from mincore.kernels.numba_threads import serialized

    return serialized(parallel) if batch > TILE and numba.get_num_threads() > 1 else serial


def fused_stepper(model):
    """(FusedStepper of a SequenceModel, None), or (None, why it cannot be fused)."""
    try:
        return FusedStepper.from_model(model), None
    except Unsupported as e:
        return None, str(e)
