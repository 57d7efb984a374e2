"""Type-check and lower every numba-cuda kernel to PTX without a GPU (run as a script by
tests/test_nvcc.py, in its own process because it fakes the device's compute capability).

The simulator runs kernels as plain Python and so never type-checks them; this does, with numba's
real CUDA pipeline (NVVM from the CUDA toolkit). Exit 0: all kernels compiled; 3: no NVVM here.
It caught min()/max() on scalars, whose vararg overloads do not compile for CUDA in numba 0.68
although the simulator runs them happily. It also checks that single-precision kernels contain no
float64 arithmetic (an untyped constant would cause it).
"""

from __future__ import annotations

import re
import sys
import types as pytypes

CC = (9, 0)


def main() -> int:
    import numba.cuda.dispatcher as disp

    if hasattr(disp, "get_current_device"):  # device functions ask the device for its CC
        disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
    from numba import cuda, types

    from mincore.kernels import gpu_common
    from mincore.kernels import numba_cuda as nc

    failed = []
    for cell in gpu_common.CELLS:  # single precision everywhere, double where the cell is richest
        lru = cell.startswith("Lru")
        for acc in (("complex64",) if lru else ("float32", "float64") if cell == "LstmBwd" else ("float32",)):
            arr = types.Array(getattr(types, acc), 1, "C")
            scan_k, carry_k = nc._kernels(cell, acc, gpu_common.steps_per_thread(acc, cell))
            try:
                ptx, _ = cuda.compile_ptx(scan_k.py_func, (arr,) * 14 + (types.int64,) * 8, cc=CC)
                cuda.compile_ptx(carry_k.py_func, (arr,) * 3 + (types.int64,) * 3, cc=CC)
            except Exception as e:  # noqa: BLE001 - report every failure, then fail
                if "NVVM" in type(e).__name__ or "libNVVM" in str(e) or "libdevice" in str(e):
                    print(f"no NVVM: {e}")
                    return 3
                failed.append(f"{cell} {acc}: {type(e).__name__}: {e}")
                continue
            if acc in ("float32", "complex64") and re.search(r"\.f64\b", ptx):
                failed.append(f"{cell} {acc}: float64 instructions in a single-precision kernel")
            print(f"{cell} {acc}: ok ({len(ptx)} bytes of PTX)")
    print("\n".join(failed) or "all kernels compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
