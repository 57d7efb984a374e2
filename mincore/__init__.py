"""mincore: minimal recurrent networks (minGRU, minLSTM, LRU) with hand-written parallel-scan kernels.

Arrays in, arrays out (NumPy on the CPU, CuPy on the GPU); see `mincore.cells` for the equations.
Importing mincore is cheap: engines (numba, CuPy) are imported the first time they are used.
Built on it: mincore.autograd, mincore.layers, mincore.models, mincore.tasks and the `mincore` command
(the layers and what each may import: docs/ARCHITECTURE.md).
"""

from .backend import engines, get_array_module
from .cells import (
    lru_scan,
    lru_scan_backward,
    min_gru,
    min_gru_backward,
    min_gru_step,
    min_lstm,
    min_lstm_backward,
    min_lstm_step,
    scan,
    scan_backward,
)
from .kernels.buffers import cpu_memory_pool

__version__ = "0.1.0"

__all__ = [
    "engines", "get_array_module", "cpu_memory_pool", "scan", "scan_backward", "min_gru", "min_gru_backward",
    "min_gru_step", "min_lstm", "min_lstm_backward", "min_lstm_step", "lru_scan", "lru_scan_backward",
    "__version__",
]
