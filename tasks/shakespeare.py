"""Character-level Shakespeare (Feng et al. 2024, sec. 4.3; data and split as nanoGPT's shakespeare_char).

Data: tiny-shakespeare (1,115,394 characters), or any UTF-8 text given as `data`. Vocabulary: the
sorted set of the text's characters (65 for tiny-shakespeare), saved in the checkpoint's config.
Split as nanoGPT: the first 90% of characters train, the last 10% test.

Model (the paper's, appendix C): embedding -> n_layers blocks of
    x = x + CausalConv1d_4(x);  x = x + Dropout(minRNN(RMSNorm(x)));  x = x + MLP(RMSNorm(x))
-> RMSNorm -> linear head (mincore.models.SequenceModel), minRNN with expansion 2. `--model lru` puts
the LRU (Orvieto et al. 2023) in place of the minRNN, its nu, theta, gamma and B at lr * lru_lr_factor
without weight decay.

Test loss (`loss`): nanoGPT's estimate, i.e. windows of `context` characters, every position
counted, mean cross entropy in nats per character; here the windows tile the WHOLE test split
(every test character predicted exactly once, with 1 .. context characters of context, the same
distribution as nanoGPT's random windows, but exact and deterministic). `stateful_loss`: one pass
over the whole test split as a single sequence, carrying the RNN and conv state (what an RNN user
gets), evaluated in chunks of `eval_chunk` characters, which equals one pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from mincore.autograd import F, no_grad
from mincore.autograd.distributed import world
from mincore.models import SequenceModel, lru_param_groups

from . import Option, loop, saved_config
from .chardata import CORPUS_NAME, CORPUS_SHA256, CORPUS_URL, Vocab, corpus_path, load_text, sha256, split
from .config import LoopConfig

__all__ = ["ShakespeareConfig", "PRESETS", "MODELS", "THREADS", "OPTIONS", "CORPUS_URL", "CORPUS_SHA256",
           "CORPUS_NAME", "Vocab", "corpus_path", "load_text", "split", "build_model", "ShakespeareTask", "Task",
           "config", "from_dict", "train", "describe", "verify_data", "load_model", "generate"]

MODELS = ("mingru", "minlstm", "lru")
# CPU threads `mincore train` uses unless --threads says otherwise (None: all cores). The default
# preset's GEMMs (4096 x 128 x 512) scale: 0.30-0.35 s per step on 2 threads against 0.39-0.44 on one
# (2-core machine, docs/SHAKESPEARE.md).
THREADS = None
OPTIONS = (Option("data", "a UTF-8 text file [default: tiny-shakespeare, downloaded once].", file=True),)


@dataclass(frozen=True)
class ShakespeareConfig(LoopConfig):
    model: str = "mingru"            # recurrent cell: mingru | minlstm | lru
    data: str | None = None          # UTF-8 text file; None: tiny-shakespeare from the per-user cache
    context: int = 256               # characters per training window (and per test window)
    d_model: int = 384               # residual stream width (embedding size)
    expansion: float = 2.0           # recurrent state width = expansion * d_model
    n_layers: int = 3                # blocks of conv -> minRNN -> MLP
    conv_kernel: int = 4             # causal depthwise conv width (0: no conv)
    mlp_mult: int = 4                # MLP hidden width = mlp_mult * d_model
    dropout: float = 0.2             # after the minRNN and inside the MLP (training only)
    eval_batch: int = 64             # test windows per forward pass
    eval_chunk: int = 8192           # characters per forward in the stateful pass
    stateful_eval: bool = True       # also report stateful_loss at every evaluation
    lru_lr_factor: float = 0.5       # lru: lr of nu, theta, gamma, B relative to lr (Orvieto et al.: 0.1-0.5)

    def validate(self):
        super().validate()
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if min(self.context, self.d_model, self.n_layers, self.mlp_mult, self.eval_batch, self.eval_chunk) < 1:
            raise ValueError("context, d_model, n_layers, mlp_mult, eval_batch and eval_chunk must be >= 1")
        if self.expansion <= 0 or not 0 <= self.dropout < 1 or self.conv_kernel < 0:
            raise ValueError(f"need expansion > 0, 0 <= dropout < 1, conv_kernel >= 0; got {self.expansion}, "
                             f"{self.dropout}, {self.conv_kernel}")
        if not 0 < self.lru_lr_factor <= 1:
            raise ValueError(f"lru_lr_factor must be in (0, 1], got {self.lru_lr_factor}")


PRESETS = {
    # 2-core CPU (docs/SHAKESPEARE.md): 3 blocks of d 128 (0.71M parameters), 4,096 characters per step
    # as 16 windows of 256 (the paper's and nanoGPT's context; the test windows are as long), AdamW 4e-3
    # with cosine decay, weight decay 0.2, dropout 0.1. Measured (2200 steps, seed 0): the model overfits
    # the 1M training characters (dropout 0: the test loss rose from 1.504 at step 1650 to 1.517), so
    # regularisation moves it: weight decay 0.1 / 0.2 / 0.3 at lr 3e-3 gave 1.4795 / 1.4715 / 1.4672,
    # lr 4e-3 1.4741, both together 1.4612. 2200 steps and 4 evaluations cost ~1.2x 1800 steps and 6
    # evaluations, which took 9.5-12 minutes on idle 2-core machines.
    "default": ShakespeareConfig(d_model=128, context=256, batch_size=16, steps=2200, lr=4e-3, warmup=100,
                                 min_lr_factor=0.1, weight_decay=0.2, dropout=0.1, clip=1.0, eval_every=550,
                                 log_every=10),
    # Feng et al. 2024 (appendix C): 3 layers, embedding 384, expansion 2, dropout 0.2, AdamW lr 1e-3,
    # batch 64, 5000 steps, grad clip 0.25, test loss every 25 steps; context 256 as nanoGPT.
    "paper": ShakespeareConfig(d_model=384, context=256, batch_size=64, steps=5000, lr=1e-3, warmup=100,
                               min_lr_factor=0.1, weight_decay=0.1, dropout=0.2, clip=0.25, eval_every=25,
                               log_every=5),
}


# ------------------------------------------------------------------------------ model and task
def build_model(cfg: ShakespeareConfig, vocab_size: int) -> SequenceModel:
    return SequenceModel(d_model=cfg.d_model, d_output=vocab_size, vocab_size=vocab_size, n_layers=cfg.n_layers,
                         cell=cfg.model, expansion=cfg.expansion, norm="rms", conv_kernel=cfg.conv_kernel,
                         mlp=True, mlp_hidden=cfg.mlp_mult * cfg.d_model, dropout=cfg.dropout,
                         engine=cfg.engine, seed=cfg.seed)


class ShakespeareTask:
    """Character-level language modelling for mincore.tasks.loop.train."""

    metric, higher_is_better = "loss", False

    def __init__(self, cfg: ShakespeareConfig, text: str | None = None):
        cfg.validate()
        self.cfg = cfg
        text = load_text(cfg.data) if text is None else text
        self.vocab = Vocab(text)
        self.train_ids, self.test_ids = split(self.vocab.encode(text))
        if len(self.train_ids) < cfg.context + 2 or len(self.test_ids) < 2:
            raise ValueError(f"text of {len(text)} characters is too short for context {cfg.context}")
        self.model, self.xp = build_model(cfg, len(self.vocab)), np

    def param_groups(self):
        c = self.cfg
        return lru_param_groups(self.model, c.weight_decay, c.lr, c.lru_lr_factor)

    def batch(self, rng, size):
        """nanoGPT's get_batch: `size` random windows of context + 1 characters from the train split."""
        T = self.cfg.context
        start = rng.integers(0, len(self.train_ids) - T - 1, size)
        w = self.train_ids[start[:, None] + np.arange(T + 1)]
        return self.xp.asarray(w[:, :-1]), self.xp.asarray(w[:, 1:])

    def loss(self, batch):
        x, y = batch
        logits, _ = self.model(x)
        return F.cross_entropy(logits, y), {}

    @no_grad()
    def window_loss(self) -> float:
        """Mean CE (nats/char) over non-overlapping context windows tiling the whole test split (under
        MPI each rank takes its share of the batches of windows, and the sums are added)."""
        c, ids = self.cfg, self.test_ids
        x, y = ids[:-1], ids[1:]
        n_full = len(x) // c.context
        xs = x[:n_full * c.context].reshape(n_full, c.context)
        ys = y[:n_full * c.context].reshape(n_full, c.context)
        chunks = [(xs[i:i + c.eval_batch], ys[i:i + c.eval_batch]) for i in range(0, n_full, c.eval_batch)]
        if len(x) > n_full * c.context:  # the remainder as one shorter window
            chunks.append((x[None, n_full * c.context:], y[None, n_full * c.context:]))
        ranks = world()
        return ranks.sum([self._nll(ranks.split(chunks), carry=False)])[0] / len(y)

    @no_grad()
    def stateful_loss(self) -> float:
        """Mean CE over the whole test split read as ONE sequence, state carried between chunks."""
        c, ids = self.cfg, self.test_ids
        x, y = ids[:-1], ids[1:]
        chunks = [(x[None, i:i + c.eval_chunk], y[None, i:i + c.eval_chunk]) for i in range(0, len(x), c.eval_chunk)]
        return self._nll(chunks, carry=True) / len(y)

    def _nll(self, chunks, carry):
        total, state = 0.0, None
        for x, y in chunks:
            logits, s = self.model(self.xp.asarray(x), state)
            state = s if carry else None
            total += float(F.cross_entropy(logits, self.xp.asarray(y)).item()) * y.size
        return total

    def evaluate(self) -> dict:
        out = {"loss": self.window_loss()}
        if self.cfg.stateful_eval:
            out["stateful_loss"] = world().on_root(self.stateful_loss)  # one sequence: rank 0's to compute
        return out

    def meta(self) -> dict:
        """The vocabulary (generation needs it) and which text, with its sha256, for config.json and
        every checkpoint."""
        source = corpus_path(self.cfg.data)
        return {"vocab": self.vocab.chars, "data": str(source), "data_sha256": sha256(source.read_bytes())}


Task = ShakespeareTask
config, from_dict, train, describe = loop.task_functions("shakespeare", ShakespeareConfig, PRESETS, ShakespeareTask)


def verify_data(meta: dict, cfg: ShakespeareConfig, source, how: str) -> None:
    """Refuse the text `cfg` reads when its sha256 is not the one the run saved (meta["data_sha256"],
    written by ShakespeareTask.meta): a resumed or re-evaluated run must read the text it was trained
    on. The ValueError names the file, both digests (12 hex digits) and `how` to proceed."""
    want = meta.get("data_sha256")
    if want is None:  # a run saved without a digest: nothing to compare
        return
    if not isinstance(want, str):
        raise ValueError(f"{source}: the saved data_sha256 is {want!r}, expected a hex digest")
    p = corpus_path(cfg.data)
    got = sha256(p.read_bytes())
    if got != want:
        raise ValueError(f"{source}: {p} is not the text the run was trained on (its sha256 {got[:12]}..., the "
                         f"run's {want[:12]}...); {how}")


# ------------------------------------------------------------------------------ generation
def load_model(path, engine: str | None = None):
    """(model in eval mode, Vocab, checkpoint config) from a checkpoint written by `train`."""
    from mincore.autograd import load_checkpoint

    ck = load_checkpoint(path)
    meta = ck.config
    if not isinstance(meta, dict) or meta.get("task") != "shakespeare":
        got = meta.get("task") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: not a shakespeare checkpoint (task {got!r})")
    _, cfg = saved_config(meta, path, task="shakespeare")
    if not isinstance(meta.get("vocab"), str) or not meta["vocab"]:
        raise ValueError(f"{path}: the saved vocabulary is {meta.get('vocab')!r}, expected the text's characters")
    cfg = dataclasses.replace(cfg, engine=engine)
    vocab = Vocab(meta["vocab"])
    model = build_model(cfg, len(vocab))
    loop.place(model, engine)
    try:
        model.load_state_dict(ck.params)
    except (KeyError, ValueError) as e:  # names or shapes that are not the model's (an edited config)
        raise ValueError(f"{path}: the saved parameters do not fit the model its config describes "
                         f"({e.args[0] if e.args else e})") from None
    return model.eval(), vocab, {**meta, "step": ck.step}


def _sample(logits: np.ndarray, rng, temperature: float, top_k: int | None) -> int:
    """One draw from softmax(logits / temperature) restricted to the top_k largest (greedy at T = 0),
    with the same arithmetic as the fused generator (mincore.generation.sample_rows)."""
    from mincore.generation import sample_rows

    u = rng.random() if temperature > 0 else 0.0  # greedy draws nothing, as before
    return int(sample_rows(np.asarray(logits)[None], (u,), temperature, top_k)[0])


@no_grad()
def generate(model, vocab: Vocab, prompt: str, tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None):
    """Yield `tokens` sampled characters after `prompt`: the prompt in ONE parallel forward pass
    (which returns every block's state: the conv's last K-1 inputs and the RNN's h), then one
    recurrent `step` per character, constant memory per token."""
    if not prompt:
        raise ValueError("prompt: expected at least one character")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature}")
    rng = np.random.default_rng(seed)
    xp = model.embed.weight.xp
    logits, state = model(xp.asarray(vocab.encode(prompt)[None]))
    last = loop.to_host(logits.data[0, -1])
    for _ in range(tokens):
        tok = _sample(last, rng, temperature, top_k)
        yield vocab.chars[tok]
        logits, state = model.step(xp.asarray([tok]), state)
        last = loop.to_host(logits.data[0])
