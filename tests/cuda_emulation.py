"""Run the CUDA C kernels of the "cupy" engine on the CPU: g++ compiles the exact translation unit
CuPy hands to NVRTC (cupy_engine.source()) against tests/cuda_host_shim.h, and the engines' own
launch sequence (gpu_common.launch, through cupy_engine.target) drives it with NumPy arrays. So the
CUDA C cells, the scan skeleton (segments, shuffle carry scan, global chunks) and the launcher's
argument order are all checked against the oracle on a machine without a GPU. Not checked: NVRTC
itself, hardware float16 conversion, the memory model, speed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from mincore.kernels import cupy_engine, gpu_common

SHIM = Path(__file__).with_name("cuda_host_shim.h")
CXX = shutil.which("g++") or shutil.which("clang++")


def _entries() -> str:
    rows = []
    for e in cupy_engine.all_name_expressions():
        fn = e.replace("mc_scan<", "run_scan<", 1).replace("mc_carry<", "run_carry<", 1)
        rows.append(f'  {{"{e}", &{fn}}},')
    return "\n".join(rows)


_GLUE = r"""
#include <cstring>
template <class Cell, int N> void run_scan(void** p, const int* iv) {
  using S = typename Cell::S;
  using V = typename Cell::V;
  mc_scan<Cell, N>((const S*)p[0], (const S*)p[1], (const S*)p[2], (const S*)p[3], (const S*)p[4],
                   (const S*)p[5], (const S*)p[6], (S*)p[7], (S*)p[8], (S*)p[9], (S*)p[10],
                   (V*)p[11], (V*)p[12], (V*)p[13], iv[0], iv[1], iv[2], iv[3], iv[4], iv[5], iv[6], iv[7]);
}
template <class V, class S> void run_carry(void** p, const int* iv) {
  mc_carry<V, S>((V*)p[0], (V*)p[1], (const S*)p[2], iv[0], iv[1], iv[2]);
}
struct mc_entry { const char* name; void (*fn)(void**, const int*); };
static const mc_entry mc_table[] = {
ENTRIES
};
extern "C" int mc_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                         unsigned by, void** p, const int* iv) {
  for (const auto& e : mc_table)
    if (!std::strcmp(e.name, name)) {
      try {
        mc_emulate(gx, gy, gz, bx, by, [&] { e.fn(p, iv); });
      } catch (const std::exception&) {
        return -2;  // barrier deadlock or an impossible block shape
      }
      return 0;
    }
  return -1;
}
"""


def build(cache_dir: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Compile (once per source hash) and load the emulation library."""
    src = cupy_engine.source() + _GLUE.replace("ENTRIES", _entries())
    key = hashlib.sha256((SHIM.read_text() + src).encode()).hexdigest()[:16]
    out_dir = Path(cache_dir or tempfile.gettempdir()) / "mincore-cuda-emulation"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"emu-{key}.so"
    if not lib.exists():
        cu = out_dir / f"emu-{key}.cpp"
        cu.write_text(src)
        tmp = out_dir / f"emu-{key}.{os.getpid()}.so"
        cmd = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", "-include", str(SHIM),
               str(cu), "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-20000:]}")
        tmp.replace(lib)
    dll = ctypes.CDLL(str(lib))
    dll.mc_launch.restype = ctypes.c_int
    return dll


class EmuKernel:
    """Callable like a cupy.RawKernel: k(grid, block, args, shared_mem=0), args NumPy arrays/int32."""

    def __init__(self, dll, name):
        self.dll, self.name = dll, name

    def __call__(self, grid, block, args, shared_mem=0):
        assert shared_mem <= 1 << 16, shared_mem
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        ptrs = [a.ctypes.data for a in args if isinstance(a, np.ndarray)]
        ints = [int(a) for a in args if not isinstance(a, np.ndarray)]
        assert all(isinstance(a, np.int32) for a in args if not isinstance(a, np.ndarray))
        rc = self.dll.mc_launch(self.name.encode(), *(ctypes.c_uint(v) for v in (*grid, *block[:2])),
                                (ctypes.c_void_p * len(ptrs))(*ptrs), (ctypes.c_int * len(ints))(*ints))
        assert rc != -1, f"no emulated kernel {self.name}"
        assert rc != -2, f"{self.name}: barrier deadlock or bad block shape {block}"


def engine(dll, n_sm=0):
    """An engine module look-alike (dict of the interface functions) running the emulated kernels.
    n_sm = 0 gives the thread-per-channel plan; gpu_common.plan_override forces the others."""

    def raw_kernels(cell, dtype_name, N):
        return tuple(EmuKernel(dll, n) for n in cupy_engine.name_expressions(cell, dtype_name, N))

    emulated = cupy_engine.target(np, n_sm, raw_kernels)
    return gpu_common.make_api(lambda x: emulated)
