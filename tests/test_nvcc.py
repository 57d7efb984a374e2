"""Every CUDA source compiles with nvcc, so a syntax or template error never waits for a GPU.

Runs wherever `nvcc` is on PATH (it is on the development machines); skips only where it is not.
Each .cu file compiles on its own, and the exact translation unit CuPy hands to NVRTC compiles with
every kernel instance the "cupy" engine can ask for (taking each instance's address forces it).
Where a libnvrtc is also found (toolkit lib64, the nvidia-cuda-nvrtc wheel, $MINCORE_NVRTC), NVRTC
itself compiles that source with every name expression, as CuPy will at run time.
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


def _find_nvrtc():
    """libnvrtc from $MINCORE_NVRTC, the CUDA toolkit, the nvidia-cuda-nvrtc wheel, or the loader."""
    import ctypes.util
    import glob
    import os

    roots = [os.environ.get("CUDA_HOME", ""), str(Path(NVCC or "/x/x/x").resolve().parent.parent)]
    pats = [os.environ.get("MINCORE_NVRTC", "")] + [f"{r}/lib64/libnvrtc.so*" for r in roots if r]
    try:
        import nvidia

        pats += [f"{p}/cu*/lib/libnvrtc.so*" for p in nvidia.__path__] + \
            [f"{p}/cuda_nvrtc/lib/libnvrtc.so*" for p in nvidia.__path__]
    except ImportError:
        pass
    for pat in filter(None, pats):
        hits = sorted(h for h in glob.glob(pat) if "builtins" not in h and ".alt." not in h)
        if hits:
            return hits[0]
    return ctypes.util.find_library("nvrtc")


def test_nvrtc_compiles_every_instance():
    """What CuPy does at run time, without a device: NVRTC on cupy_engine.source() with every name
    expression. Skips where no libnvrtc is found (pip install nvidia-cuda-nvrtc, or MINCORE_NVRTC)."""
    import ctypes
    import glob

    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found")
    for b in glob.glob(str(Path(path).parent / "libnvrtc-builtins.so*")):  # dlopen'ed by soname
        if ".alt." not in b:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), cupy_engine.source().encode(), b"mincore.cu",
                                  0, None, None) == 0
    names = cupy_engine.all_name_expressions()
    for n in names:
        assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0
    opts = [f"-arch={ARCH}".encode(), b"-std=c++17"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, f"NVRTC failed ({rc}):\n{log.value.decode()}"
    for n in names:
        lowered = ctypes.c_char_p()
        assert lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)) == 0 and lowered.value, n
    lib.nvrtcDestroyProgram(ctypes.byref(prog))


def test_numba_cuda_kernels_compile_to_ptx():
    """numba's real CUDA pipeline types and lowers the numba-cuda kernels (the simulator never
    type-checks them): tests/numba_ptx_check.py in its own process, NVVM from nvcc's toolkit."""
    import glob
    import os
    import sys

    script = Path(__file__).with_name("numba_ptx_check.py")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    homes = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""),
             str(Path(NVCC).resolve().parent.parent), "/usr/local/cuda",
             *sorted(glob.glob("/usr/local/cuda-*"))]
    home = next((h for h in homes if h and (Path(h) / "nvvm" / "libdevice").is_dir()), None)
    if home is None:
        pytest.skip("no CUDA toolkit with nvvm/libdevice found (set CUDA_HOME)")
    env["CUDA_HOME"] = home
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=900, cwd=script.parent.parent)
    if r.returncode == 3:
        pytest.skip(f"numba finds no NVVM here: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, f"numba-cuda kernels do not compile:\n{r.stdout[-8000:]}\n{r.stderr[-8000:]}"
