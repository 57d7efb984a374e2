"""`mincore bench kernels`: kernel times and effective bandwidth against this machine's copy."""

from __future__ import annotations

import click

from .main import main


@main.group()
def bench():
    """Benchmarks (figures for docs/BENCHMARKS.md)."""


def _shape(text: str):
    try:
        B, T, D = (int(x) for x in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"expected B,T,D such as 64,4096,256, got {text!r}") from None
    if min(B, T, D) < 1:
        raise click.BadParameter(f"B, T and D must be >= 1, got {text!r}")
    return B, T, D


@bench.command()
@click.option("--engine", "engines", multiple=True,
              help="Engine to time (repeatable). Default: every engine that can run on this device.")
@click.option("--shape", "shapes", multiple=True, help="B,T,D (repeatable). Default: the issue's shapes.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Timed runs (median).")
@click.option("--gpu/--cpu", default=False, help="Benchmark CuPy arrays on the GPU engines.")
@click.option("--log-space", is_flag=True, help="Time min_gru with h~ = g(v) (the paper's log-space model).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch baselines even when torch is installed.")
@click.option("--quick", is_flag=True, help="One small shape, 3 repeats: a smoke run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the rows as JSON.")
def kernels(engines, shapes, dtype, repeats, gpu, log_space, no_torch, quick, json_path):
    """Time min_gru forward / backward per engine; report GB/s of minimal traffic vs copy.

    \b
    Examples:
      mincore bench kernels
      mincore bench kernels --engine numba --shape 64,4096,256 --repeats 9
      mincore bench kernels --gpu
    """
    import json

    import numpy as np

    from mincore import bench as B
    from mincore.backend import engines as engine_table

    xp_name = "cupy" if gpu else "numpy"
    table = engine_table()
    if not engines:
        engines = [n for n, e in table.items() if e["available"] and xp_name in e["arrays"]
                   and n != "numpy"]
    for n in engines:
        if n not in table:
            raise click.BadParameter(f"unknown engine {n!r}; expected one of {list(table)}",
                                     param_hint="--engine")
        if not table[n]["available"]:
            raise click.ClickException(f"engine {n!r} cannot run here: {table[n]['reason']}")
    shapes = [_shape(s) for s in shapes] or ([(8, 256, 64)] if quick else
                                             list(B.SHAPES_GPU if gpu else B.SHAPES_CPU))
    repeats = 3 if quick else repeats
    if gpu:  # CUDA-event timings, device copy bandwidth in the same run (mincore.bench_gpu)
        from mincore import bench_gpu

        rows = bench_gpu.gpu_bench(shapes, list(engines), dtype=dtype, repeats=max(repeats, 20),
                                   log_space=log_space, torch=not no_torch)
        click.echo(bench_gpu.markdown(rows))
    else:
        rows = []
        for shape in shapes:
            click.echo(f"timing {shape} {dtype} ...", err=True)
            rows += B.bench_min_gru(shape, list(engines), dtype=np.dtype(dtype), repeats=repeats,
                                    log_space=log_space, torch=not no_torch)
        click.echo(B.format_rows(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
