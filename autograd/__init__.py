"""mincore.autograd: a small tape-based autograd over NumPy / CuPy arrays.

    Tensor, Parameter, no_grad        tensor.py: the tape and backward()
    ops (+ - * / ** matmul ...)       ops.py: primitives with their VJPs, one `unbroadcast`
                                      (activations in elementwise.py, re-exported by ops)
    F (functional)                    functional.py: fused norms, conv, dropout, losses, `primitive`
    nn                                nn.py: Module, Linear, Embedding, norms, CausalConv1d, MLP, GLU
    optim                             optim.py: Adam, AdamW, clip_grad_norm, schedules
    save_checkpoint, load_checkpoint  checkpoint.py: atomic HDF5 checkpoints

Imports mincore.backend, and mincore.kernels only inside `gelu` (the fused numba GELU; `import
mincore.autograd` does not load numba), besides numpy and h5py. Never mincore.cells: the recurrent
primitives that need it live in mincore.layers. The rule and why: docs/ARCHITECTURE.md, Layers
(checked by tests/test_layering.py).
"""

from . import functional, nn, ops, optim
from . import functional as F
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .functional import primitive
from .ops import unbroadcast
from .tensor import Parameter, Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, record, tensor

__all__ = ["Tensor", "Parameter", "tensor", "as_tensor", "no_grad", "enable_grad", "is_grad_enabled",
           "record", "primitive", "unbroadcast", "ops", "functional", "F", "nn", "optim",
           "save_checkpoint", "load_checkpoint", "Checkpoint"]
