"""Every CUDA source compiles with nvcc, so a syntax or template error never waits for a GPU.

Runs wherever `nvcc` is on PATH (it is on the development machines); skips only where it is not.
Each .cu file compiles on its own, and the exact translation unit CuPy hands to NVRTC compiles with
every kernel instance the "cupy" engine can ask for (taking each instance's address forces it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mincore.kernels import cupy_engine

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
KERNELS = Path(cupy_engine.__file__).resolve().parent
ARCH = "sm_90"  # H100 class; any arch would do for a syntax check


def _nvcc(src: Path, out: Path, *flags):
    cmd = [NVCC, f"-arch={ARCH}", *flags, str(src), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.parametrize("name", sorted(p.name for p in KERNELS.glob("*.cu")))
def test_each_cu_file_compiles(name, tmp_path):
    _nvcc(KERNELS / name, tmp_path / "out.o", "-c")


def test_every_engine_instance_compiles(tmp_path):
    exprs = cupy_engine.all_name_expressions()
    src = tmp_path / "instances.cu"
    src.write_text(cupy_engine.source() + "\nvoid* mincore_instances[] = {\n"
                   + "".join(f"  (void*)&{e},\n" for e in exprs) + "};\n")
    r = _nvcc(src, tmp_path / "instances.cubin", "-cubin", "-Xptxas", "-warn-spills")
    assert "error" not in r.stderr.lower(), r.stderr
