"""`mincore bench kernels`: kernel times and effective bandwidth against this machine's copy, on the CPU
engines (host clock) or the GPU engines (CUDA events). The defaults live in mincore.bench."""

from __future__ import annotations

import click

from .options import check_engine, check_fits, not_empty, warn_threads

PLAN_HELP = ("GPU launch plan forced on every GPU engine, e.g. dpb=16,nseg=16,C=1 (channels per block, "
             "time segments per block, chunks along T); a sweep over plans tunes the plan rule on a new device.")


@click.group()
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


def _host_bytes(shape, dtype: str, cells, pattern=False) -> int:
    """A lower bound of the host memory one shape takes: one input drawn in float64 at a time, and
    the cell's arrays alive at once kept as `dtype` (mincore.bench.ARRAYS; on the GPU, minGRU's
    inputs k, v and dh before the copy to the device), and with `pattern` its access pattern's."""
    import numpy as np

    from mincore.bench import ARRAYS
    from mincore.bench_pattern import pattern_arrays

    B, T, D = shape
    arrays = max(ARRAYS[c] + (pattern_arrays(c) if pattern else 0) for c in cells)
    return B * T * D * (8 + arrays * np.dtype(dtype).itemsize)


def _plan(ctx, param, text):
    """--plan dpb=16,nseg=16,C=1 -> {"dpb": 16, "nseg": 16, "C": 1}, checked against the plan fields."""
    if text is None:
        return None
    from mincore.kernels.gpu_common import PLAN_FIELDS

    fields = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in PLAN_FIELDS or not value.strip().isdigit() or int(value) < 1:
            raise click.BadParameter(f"expected FIELD=N items with FIELD in {', '.join(PLAN_FIELDS)} and N >= 1, "
                                     f"got {item!r}")
        fields[key.strip()] = int(value)
    return fields


def _engines(names, gpu: bool, dtype: str) -> list[str]:
    """The engines to time: the ones named (each checked), else every engine that runs here on the
    arrays of --cpu/--gpu and takes `dtype`, the oracle excepted."""
    import importlib

    from mincore.backend import engines, get_engine

    for n in names:
        check_engine(n)
    table, xp_name = engines(), "cupy" if gpu else "numpy"
    if gpu and not table["cupy"]["available"]:
        raise click.UsageError(f"--gpu needs CuPy on a CUDA device: {table['cupy']['reason']}")
    foreign = [n for n in names if xp_name not in table[n]["arrays"]]
    if foreign:
        raise click.BadParameter(f"engine {foreign[0]!r} takes {' or '.join(table[foreign[0]]['arrays'])} "
                                 f"arrays, not {xp_name}: {'drop' if gpu else 'add'} --gpu", param_hint="--engine")
    chosen = list(names) or [n for n, e in table.items() if e["available"] and xp_name in e["arrays"] and n != "numpy"]
    xp = importlib.import_module(xp_name)
    takes = {n: dtype in get_engine(n, xp)[1].DTYPES for n in chosen}
    refused = [n for n in names if not takes[n]]
    if refused:
        raise click.BadParameter(f"engine {refused[0]!r} does not take {dtype} arrays", param_hint="--dtype")
    return [n for n in chosen if takes[n]]


@bench.command()
@click.option("--engine", "engines", multiple=True,
              help="Engine to time (repeatable). Default: every engine that can run on this device.")
@click.option("--shape", "shapes", multiple=True,
              help="B,T,D (repeatable). Default: (64,512,256), (64,4096,256), (8,65536,64) on the CPU; "
                   "(64,512,256), (64,4096,256), (8,65536,256), (512,64,256) on the GPU.")
@click.option("--dtype", type=click.Choice(["float32", "float64", "float16"]), default="float32",
              show_default=True, help="float16: storage on the GPU (cupy engine), float32 accumulation.")
@click.option("--repeats", type=click.IntRange(1), default=None,
              help="Timed runs (median).  [default: 5 on the CPU, 20 on the GPU]")
@click.option("--gpu/--cpu", default=False, help="Benchmark CuPy arrays on the GPU engines.")
@click.option("--cell", "cells", multiple=True, type=click.Choice(["mingru", "minlstm", "lru", "scan", "all"]),
              help="Recurrence to time (repeatable): min_gru, min_lstm, lru_scan (complex: float32 means "
                   "complex64) or the plain scan, each forward and backward.  [default: mingru; the GPU "
                   "bench times mingru only]")
@click.option("--log-space", is_flag=True,
              help="Time minGRU / minLSTM with h~ = g(v) (the paper's log-space models).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch baselines even when torch is installed.")
@click.option("--pattern", is_flag=True,
              help="Also time each cell's loads and stores without its arithmetic (same arrays, row "
                   "directions and streamed stores): the ceiling of its kernels' access pattern (CPU).")
@click.option("--plan", callback=_plan, help=PLAN_HELP)
@click.option("--quick", is_flag=True,
              help="A smoke run: one shape, 3 repeats; on the CPU (16,4096,256) (larger than the caches), "
                   "the numba engine unless --engine names others, no PyTorch baselines.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=not_empty,
              help="Also write the rows as JSON.")
def kernels(engines, shapes, dtype, repeats, gpu, cells, log_space, no_torch, pattern, plan, quick, json_path):
    """Time the recurrences forward / backward per engine; report GB/s of minimal traffic vs copy.

    On the CPU each row is a median with its min and max, beside a yardstick measured in the same
    run, interleaved with the kernels: calls with preallocated outputs ("(out=)") against the fastest
    copy into a preallocated array, public calls that allocate against an allocating copy
    (x.copy()). Warnings name what makes a run's ratios doubtful (busy machine, wide spread, arrays
    in cache).

    \b
    Examples:
      mincore bench kernels
      mincore bench kernels --engine numba --shape 64,4096,256 --repeats 9
      mincore bench kernels --engine numba --cell all --shape 64,4096,256 --no-torch
      mincore bench kernels --engine numba --cell all --shape 64,4096,256 --no-torch --pattern
      mincore bench kernels --gpu --log-space
      mincore bench kernels --gpu --engine cupy --shape 8,65536,256 --plan dpb=16,nseg=16,C=1
    """
    import contextlib
    import json

    from mincore import bench as B

    if plan and not gpu:
        raise click.BadParameter("a launch plan applies to the GPU engines: add --gpu", param_hint="--plan")
    if dtype == "float16" and not gpu:
        raise click.BadParameter("float16 storage is a GPU feature: add --gpu", param_hint="--dtype")
    cells = list(B.CELLS) if "all" in cells else list(dict.fromkeys(cells)) or ["mingru"]
    if gpu and cells != ["mingru"]:
        raise click.BadParameter(f"the GPU bench times mingru only, got {', '.join(cells)}", param_hint="--cell")
    if pattern and gpu:
        raise click.BadParameter("the access-pattern rows time the numba CPU kernels' layout: drop --gpu",
                                 param_hint="--pattern")
    if log_space and not {"mingru", "minlstm"} & set(cells):
        raise click.BadParameter("--log-space applies to mingru and minlstm: add --cell mingru or --cell minlstm",
                                 param_hint="--log-space")
    where = "gpu" if gpu else "cpu"
    if quick and not gpu:  # the other CPU engines and torch take minutes at a shape above the caches
        engines, no_torch = engines or ("numba",), True
    engines = _engines(engines, gpu, dtype)
    quick_shape = B.SHAPES_GPU[0] if gpu else B.QUICK_SHAPE
    shapes = [_shape(s) for s in shapes] or ([quick_shape] if quick else list(B.SHAPES[where]))
    for shape in shapes:
        check_fits(_host_bytes(shape, dtype, cells, pattern), "--shape", f"shape {','.join(map(str, shape))} ({dtype})")
    repeats = repeats or (B.QUICK_REPEATS if quick else B.REPEATS[where])
    if gpu:  # CUDA-event timings, device copy bandwidth in the same run (mincore.bench_gpu)
        from mincore import bench_gpu
        from mincore.kernels.gpu_common import plan_override

        with plan_override(**plan) if plan else contextlib.nullcontext():
            rows = bench_gpu.gpu_bench(shapes, engines, dtype=dtype, repeats=repeats, log_space=log_space,
                                       torch=not no_torch)
        click.echo(bench_gpu.markdown(rows))
    else:
        rows = []
        for cell in cells:
            cell_rows, notes = [], []
            for shape in shapes:
                click.echo(f"timing {cell} {shape} {dtype} ...", err=True)
                got = B.bench_cell(cell, shape, engines, dtype=dtype, repeats=repeats,
                                   log_space=log_space and cell in ("mingru", "minlstm"), torch=not no_torch,
                                   pattern=pattern)
                cell_rows += got[0]
                notes += got[1]
            click.echo(f"{cell}, median of {repeats} (min-max):")
            click.echo(B.format_rows(cell_rows))
            click.echo("\n".join(notes) + "\n")
            rows += cell_rows
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)


def _lengths(ctx, param, text):
    """--lengths 64,256,512 -> (64, 256, 512), each >= 1."""
    if text is None:
        return None
    try:
        lengths = tuple(int(t) for t in text.replace(" ", ",").split(",") if t)
    except ValueError:
        raise click.BadParameter(f"expected lengths such as 64,256,512, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise click.BadParameter(f"lengths must be integers >= 1, got {text!r}")
    return lengths


@bench.command()
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: CuPy arrays for mincore, CUDA for torch; times after a device synchronise.")
@click.option("--quick", is_flag=True, help="Lengths 64,256,512 only.")
@click.option("--lengths", callback=_lengths,
              help="Sequence lengths T, comma-separated. [default: 64,128,...,4096, and 8192,16384 for the "
                   "parallel models]")
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Sequences per step (B).")
@click.option("--hidden", type=click.IntRange(1), default=256, show_default=True,
              help="Hidden size H (the input size too).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed steps per model and length (median), after two warm-ups.")
@click.option("--sequential-max", type=click.IntRange(1), default=4096, show_default=True,
              help="The longest T at which the sequential models (gru, lstm, torch-gru, torch-lstm) run.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for BLAS, the numba kernels and torch, at most the CPUs this process may use. "
                   "[default: every CPU]")
@click.option("--model", "models", multiple=True,
              type=click.Choice(["mingru", "minlstm", "gru", "lstm", "torch-mingru", "torch-gru", "torch-lstm"]),
              help="Model to run (repeatable). [default: all; the torch ones when torch is installed]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=not_empty,
              help="Also write the rows as JSON: {\"rows\": [{model, T, B, hidden, device, ms, peak_mb}, ...]}.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), callback=not_empty,
              help="Also draw the figure (step time, speed-up, memory against T) into this PNG.")
def paper(device, quick, lengths, batch, hidden, repeats, sequential_max, threads, models, json_path, plot_path):
    """One training step (forward, loss, backward) of minGRU / minLSTM against sequential GRU / LSTM.

    The efficiency figure of "Were RNNs All We Needed?": step time (median), speed-up of each parallel
    model over its sequential one, and the step's peak memory, against the sequence length T, for
    mincore's layers and, when torch is installed, torch.nn.GRU / nn.LSTM and the paper's log-space
    minGRU in PyTorch.

    \b
    Examples:
      mincore bench paper --quick
      mincore bench paper --json paper.json --plot paper.png
      mincore bench paper --lengths 512,4096 --hidden 128 --model mingru --model gru --threads 1
      mincore bench paper --device gpu --lengths 64,512,4096,16384 --sequential-max 4096
    """
    import json

    from mincore import bench_paper as P

    try:
        P.array_module(device)
    except ValueError as e:  # no usable GPU: one line
        raise click.ClickException(str(e)) from None
    lengths = lengths or (P.QUICK_LENGTHS if quick else P.LENGTHS + P.LONG_LENGTHS)
    check_fits(8 * batch * max(lengths) * hidden * 4, "--lengths",
               f"a step at T = {max(lengths)} (batch {batch}, hidden {hidden})")
    if threads is not None:
        from mincore.backend import cpu_count

        warn_threads(threads)
        threads = min(threads, cpu_count())
    rows = P.run(device, lengths, batch=batch, hidden=hidden, repeats=repeats, sequential_max=sequential_max,
                 models=models or P.MODELS, threads=threads, log=lambda text: click.echo(text, err=True))
    name = P.device_name(device) + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else "")
    click.echo(f"one training step, batch {batch}, hidden {hidden}, float32, {device} ({name}):")
    click.echo(P.markdown(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "device_name": name}, f, indent=1)
    if plot_path:
        P.plot(rows, plot_path, f"one training step, batch {batch}, hidden {hidden}, {name}")
