"""Test-environment shim, never imported by mincore itself: put this folder on PYTHONPATH
(`NUMPY_COMPAT=1 bash benchmarks/gpu_check.sh`) to run numba-cuda releases that predate NumPy 2.5.

numba-cuda 0.30.x registers an overload for `np.row_stack`, which NumPy 2.5 removed (it was an
alias of `np.vstack`), so on such a pair every numba-cuda kernel fails to compile and
`mincore.engines()` reports the engine unusable. Restoring the alias lets the GPU suite test the
numba-cuda kernels anyway (seen on the H100 image of 2026-11: numba-cuda 0.30.4, NumPy 2.5.2).
"""

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack
