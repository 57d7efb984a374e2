"""mincore.bench_gpu without a device: it imports without CuPy, and its table formats rows (the
measurement itself is exercised by the gpu-marked test_gpu.py::test_gpu_bench_rows)."""

from __future__ import annotations

from mincore import bench, bench_gpu


def test_markdown_table():
    row = {"engine": "cupy", "shape": (8, 65536, 256), "dtype": "float32", "pass": "fwd", "ms": 0.5,
           "GB/s": 3000.0, "% of copy": 90.0, "copy GB/s": 3333.0, "x torch": 40.0,
           "plan": "dpb=8 nseg=32 C=1", "device": "NVIDIA H100"}
    text = bench_gpu.markdown([row, {**row, "engine": "torch-logspace", "x torch": 1.0, "plan": ""}])
    assert text.splitlines()[0] == "device: NVIDIA H100"
    assert ("| cupy | (8, 65536, 256) | float32 | fwd | 0.500 | 3000 | 90% | 3333 | 40.0x "
            "| dpb=8 nseg=32 C=1 |") in text
    assert bench.VALUES == {"fwd": 3, "bwd": 6, "fwd+bwd": 9}
    assert (8, 65536, 256) in bench.SHAPES_GPU and (512, 64, 256) in bench.SHAPES_GPU


def test_gpu_engines_come_from_the_engine_table():
    assert bench_gpu.gpu_engines() == ["numba-cuda", "cupy"]
