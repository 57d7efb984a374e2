"""numba's threading layer for mincore's CPU kernels: fork-safe, and every launch serialised.

Why: numba picks the GNU OpenMP layer where the wheel has it (Linux), and GNU OpenMP terminates any
child that a process forks after its first parallel region ("fork() called from a process already
using GNU OpenMP"): a `multiprocessing` worker started with fork (Linux's default before Python 3.14)
after a single mincore call died at once. numba's "forksafe" choice takes TBB where it loads and
otherwise its own `workqueue` layer, which survives fork; forkserver and spawn work with any layer.

`workqueue` aborts the process when two threads launch parallel kernels at the same time, so every
launcher here runs under one process-wide lock (`serialized`). Each launch uses every core anyway:
two threads calling mincore take turns instead of sharing the cores. The uncontended lock costs
~0.1 us per call. Measured at (64, 4096, 256) float32, min_gru forward + backward, 2 cores:
workqueue as fast as OpenMP (docs/BENCHMARKS.md).

Your choice wins: with NUMBA_THREADING_LAYER set, or numba.config.THREADING_LAYER changed before
mincore's first kernel call, or numba's layer already started by other code, mincore leaves it alone
(then fork after a kernel call is as safe as that layer: see docs/RELIABILITY.md).
"""

from __future__ import annotations

import functools
import os
import threading

import numba
from numba.np.ufunc import parallel as _parallel


def choose_layer() -> None:
    """Ask numba for a fork-safe threading layer unless the user (or earlier code) decided."""
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return
    if not getattr(_parallel, "_is_initialized", False):
        numba.config.THREADING_LAYER = "forksafe"


_LAUNCH = threading.RLock()


def serialized(fn):
    """Run the launcher `fn` under the process-wide kernel lock."""
    @functools.wraps(fn)
    def launch(*args, **kwargs):
        with _LAUNCH:
            return fn(*args, **kwargs)
    return launch


choose_layer()
