"""mincore inside PyTorch (extra `mincore[torch]`): the scans as differentiable torch operators and
the layers as torch.nn.Modules. `import mincore` never imports torch; `import mincore.torch` does.

    scan(a, b, h0=None, *, reverse=False)
    min_gru(k, v, h0=None, *, log_space=False)
    min_lstm(kf, ki, v, h0=None, *, normalize=True, log_space=False)
    lru_scan(lam, bu, h0=None)
    MinGRU, MinLSTM, LRU: forward(x, h0=None) -> (y, h_last), step(x_t, state=None) -> (y_t, state)

CPU tensors run the numba kernels, CUDA tensors the CuPy ones, without copies (docs/INTEROP.md).
"""

from .modules import LRU, MinGRU, MinLSTM, g
from .ops import check_tensors, lru_scan, min_gru, min_lstm, scan

__all__ = ["scan", "min_gru", "min_lstm", "lru_scan", "MinGRU", "MinLSTM", "LRU", "g", "check_tensors"]
