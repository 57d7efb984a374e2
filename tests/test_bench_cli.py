"""`mincore bench kernels`: the one benchmark command (CPU and GPU engines), its defaults from
mincore.bench, and its checks of --plan / --dtype, through click's CliRunner (no device needed)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mincore import backend as mb
from mincore import bench as B
from mincore.cli.bench import _engines, bench


def run(*args):
    return CliRunner().invoke(bench, list(args))


def test_bench_is_a_plain_group_that_does_not_import_the_main_group():
    code = "import sys, mincore.cli.bench as b; print(b.bench.name, 'mincore.cli.main' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["bench", "False"]


def test_help_names_the_default_shapes_and_the_plan_option():
    r = run("kernels", "--help")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for shape in (*B.SHAPES_CPU, *B.SHAPES_GPU):
        assert ",".join(map(str, shape)) in text
    assert "--plan" in text and "dpb=16,nseg=16,C=1" in text
    assert "issue" not in text


@pytest.mark.parametrize("args, words", [
    (["--plan", "dpb=16,nseg=16"], "add --gpu"),
    (["--gpu", "--plan", "dpb=16,N=4"], "FIELD=N items with FIELD in dpb, nseg, C"),
    (["--gpu", "--plan", "nseg=0"], "got 'nseg=0'"),
    (["--dtype", "float16"], "add --gpu"),
])
def test_bad_options_are_refused_naming_them(args, words):
    r = run("kernels", *args)
    assert r.exit_code != 0 and words in r.output, r.output


@pytest.mark.skipif(mb.engines()["cupy"]["available"], reason="checks the refusal where no device is usable")
def test_gpu_without_a_device_says_why():
    r = run("kernels", "--gpu", "--quick")
    assert r.exit_code != 0 and "--gpu needs CuPy on a CUDA device" in r.output, r.output


def test_engines_that_refuse_the_arrays_or_the_dtype_are_named():
    with pytest.raises(click.BadParameter, match="engine 'numba' does not take float16 arrays"):
        _engines(("numba",), False, "float16")
    if not mb.engines()["cupy"]["available"]:
        return  # `--gpu --engine numba` is checked after the device
    with pytest.raises(click.BadParameter, match="engine 'numba' takes numpy arrays, not cupy: drop --gpu"):
        _engines(("numba",), True, "float32")


def test_default_cpu_engines_leave_out_the_oracle():
    chosen = _engines((), False, "float32")
    assert "numba" in chosen and "logspace" in chosen and "numpy" not in chosen
