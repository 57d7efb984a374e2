"""mincore.torch against the NumPy API and minGRU-pytorch, in one run (CPU, float32).

1. The scan: forward + backward of the log-space minGRU on the same (B, T, D) data, medians of
   --runs runs, taken in turn so that the machine's load falls on each alike:
     torch adapter   h = mincore.torch.min_gru(k, v, log_space=True); h.backward(dh)  (torch.autograd)
     NumPy API       h = mincore.min_gru(k, v, log_space=True); mincore.min_gru_backward(k, v, h, dh, ...)
     minGRU-pytorch  its log-space parallel path on the same k, v (gate, hidden): -softplus, log_g,
                     heinsen_associative_scan_log, backward through torch.autograd
2. A training step of the selective-copying model in PyTorch (embedding, 3 pre-norm residual minGRU
   blocks, d_model 64, expansion 6, dropout 0.1, RMSNorm, head; cross entropy on the 16 marker
   positions, clipping 1.0, AdamW) with mincore.torch.MinGRU(log_space=True, bias=False) and with
   minGRU-pytorch's minGRU (the same layer: log-space, no bias), batch 64, sequence 256.

    python benchmarks/torch_adapter.py [--shape 64 4096 256] [--runs 7] [--ref-runs 3]
                                       [--steps 10] [--no-train]

minGRU-pytorch is optional (pip install mingru-pytorch); without it its rows are left out.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
import torch.nn.functional as F
from interleaved import medians, table  # benchmarks/interleaved.py (run as a script)
from torch import nn

import mincore
import mincore.torch as mt
from mincore.tasks.copy import make_batch

try:
    import minGRU_pytorch
    from minGRU_pytorch.minGRU import heinsen_associative_scan_log, log_g
except ImportError:  # optional: its rows are left out
    minGRU_pytorch = None


def scan_cases(shape, seed=0):
    """name -> a function running forward + backward once, all on the same k, v, dh."""
    rng = np.random.default_rng(seed)
    k, v, dh = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    tk, tv = torch.from_numpy(k).requires_grad_(), torch.from_numpy(v).requires_grad_()
    tdh = torch.from_numpy(dh)

    def numpy_api():
        h = mincore.min_gru(k, v, log_space=True)
        mincore.min_gru_backward(k, v, h, dh, log_space=True)

    def adapter():
        tk.grad = tv.grad = None  # the gradients are fresh buffers every step, as in training
        mt.min_gru(tk, tv, log_space=True).backward(tdh)

    def reference():  # minGRU.forward's parallel branch, without its projection (gate = k, hidden = v)
        tk.grad = tv.grad = None
        log_coeffs, log_values = -F.softplus(tk), -F.softplus(-tk) + log_g(tv)
        heinsen_associative_scan_log(log_coeffs, log_values).backward(tdh)

    cases = {"mincore.torch.min_gru": adapter, "mincore.min_gru (NumPy API)": numpy_api}
    if minGRU_pytorch is not None:
        cases["minGRU-pytorch log-space scan"] = reference
    return cases


class CopyModel(nn.Module):
    """The selective-copying model of mincore.tasks.copy in PyTorch, with `cell(dim)` as the RNN."""

    def __init__(self, cell, d_model=64, vocab=16, n_layers=3, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model) for _ in range(n_layers))
        self.rnns = nn.ModuleList(cell(d_model) for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)
        self.norm, self.head = nn.RMSNorm(d_model), nn.Linear(d_model, vocab)

    def forward(self, x, n_out):
        h = self.embed(x)
        for norm, rnn in zip(self.norms, self.rnns, strict=True):
            y = rnn(norm(h))
            h = h + self.drop(y[0] if isinstance(y, tuple) else y)
        return self.head(self.norm(h[:, -n_out:]))


def train_cases(batch, seq, n_data=16):
    """name -> a function running one training step of its own model on a fresh batch."""
    rng = np.random.default_rng(0)
    cells = {"mincore.torch.MinGRU": lambda d: mt.MinGRU(d, 6.0, log_space=True, bias=False)}
    if minGRU_pytorch is not None:
        cells["minGRU-pytorch minGRU"] = lambda d: minGRU_pytorch.minGRU(d, expansion_factor=6.0)
    cases = {}
    for name, cell in cells.items():
        torch.manual_seed(0)
        model = CopyModel(cell)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

        def step(model=model, opt=opt):
            x, y = (torch.from_numpy(a) for a in make_batch(rng, batch, seq, n_data))
            logits = model(x, n_data)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        cases[name] = step
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 4096, 256], metavar=("B", "T", "D"))
    ap.add_argument("--runs", type=int, default=7, help="timed runs of the mincore cases")
    ap.add_argument("--ref-runs", type=int, default=3, help="timed runs of minGRU-pytorch (slow)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    args = ap.parse_args()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), mincore {mincore.__version__}, "
          f"minGRU-pytorch {'not installed' if minGRU_pytorch is None else 'installed'}, "
          f"{platform.processor() or platform.machine()}")
    shape = tuple(args.shape)
    res = medians(scan_cases(shape), args.runs, args.ref_runs, slow="minGRU-pytorch")
    table(f"minGRU log-space forward + backward, {shape} float32", res, "mincore.min_gru (NumPy API)")
    if not args.no_train:
        res = medians(train_cases(64, 256), args.steps, args.steps, slow="minGRU-pytorch")
        table("training step, selective copying (batch 64, sequence 256), PyTorch", res, "mincore.torch.MinGRU")


if __name__ == "__main__":
    main()
