"""GPU kernel benchmark: min_gru forward / backward on the GPU engines, timed with CUDA events, against
the device's copy bandwidth measured in the same run, and the paper's PyTorch log-space minGRU.

Effective bandwidth = minimal bytes / time: forward reads k, v and writes h (3 values per element),
backward reads k, v, h, dh and writes dk, dv (6), so fwd+bwd is 9 values per element. "copy" is a
device-to-device cudaMemcpyAsync of one (B, T, D) array, counting bytes read plus written; a kernel
at 100% moves its minimal bytes as fast as the copy moves bytes. Each time is the median of
`repeats` event-timed calls after warm-up; copies are timed before and after each engine (median).
The engines are called through their implementation modules (mincore.backend.get_engine), so the
figures are the kernels plus output allocation, without the public API's argument checks.

Run it as `mincore bench kernels --gpu` (defaults in mincore.bench; `--plan` forces a launch plan):

    mincore bench kernels --gpu --log-space
    mincore bench kernels --gpu --shape 8,65536,256 --repeats 100 --json rows.json
"""

from __future__ import annotations

import statistics

import numpy as np

from .bench import REPEATS, SHAPES_GPU, VALUES


def gpu_engines() -> list[str]:
    """The engines that take device arrays only (from the engine table)."""
    from .backend import engines

    return [n for n, e in engines().items() if e["arrays"] == ["cupy"]]


def event_ms(fn, repeats=50, warmup=3) -> float:
    """Median milliseconds of fn() between two CUDA events on the current stream."""
    import cupy

    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    ts = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(ts)


def copy_gbps(nbytes: int, repeats=50) -> float:
    """Device copy bandwidth (bytes read + written per second, GB/s) for a buffer of nbytes."""
    import cupy

    src, dst = cupy.ones(nbytes, dtype=cupy.uint8), cupy.empty(nbytes, dtype=cupy.uint8)
    rt = cupy.cuda.runtime

    def copy():
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice,
                       cupy.cuda.get_current_stream().ptr)

    return 2 * nbytes / (event_ms(copy, repeats) * 1e-3) / 1e9


def device_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _row(engine, shape, dtype, pss, ms, nbytes):
    return {"engine": engine, "shape": tuple(shape), "dtype": np.dtype(dtype).name, "pass": pss,
            "ms": ms, "GB/s": VALUES[pss] * nbytes / (ms * 1e-3) / 1e9}


def _plan_text(shape, dtype, pss) -> str:
    """The launch plan(s) of a GPU engine's row: forward and backward plans differ (gpu_common.plan)."""
    import cupy

    from .kernels import gpu_common

    n_sm = cupy.cuda.Device().attributes["MultiProcessorCount"]
    out = []
    for cell in {"fwd": ("GruFwd",), "bwd": ("GruBwd",), "fwd+bwd": ("GruFwd", "GruBwd")}[pss]:
        p = gpu_common.cell_plan(cell, shape, dtype, n_sm)
        out.append(f"dpb={p.dpb} nseg={p.nseg} N={p.N} C={p.C}")
    return " / ".join(out)


def gpu_bench(shapes=SHAPES_GPU, engines=None, *, dtype="float32", repeats=REPEATS["gpu"], log_space=False,
              torch=True) -> list[dict]:
    """Rows {engine, shape, dtype, pass, ms, GB/s, copy GB/s, % of copy, x torch, plan, device};
    engines None: gpu_engines()."""
    import cupy

    engines = gpu_engines() if engines is None else list(engines)
    planned = set(gpu_engines())
    rows, dev = [], device_name()
    for shape in shapes:
        here, copy_bw = _bench_shape(tuple(shape), engines, dtype, repeats, log_space, torch)
        ref = {r["pass"]: r["ms"] for r in here if r["engine"] == "torch-logspace"}
        for r in here:
            r.update({"copy GB/s": copy_bw, "% of copy": 100 * r["GB/s"] / copy_bw, "device": dev,
                      "x torch": ref[r["pass"]] / r["ms"] if r["pass"] in ref else None,
                      "plan": _plan_text(shape, dtype, r["pass"]) if r["engine"] in planned else ""})
        rows += here
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


def _bench_shape(shape, engines, dtype, repeats, log_space, torch):
    """(rows without the copy columns, median copy GB/s) for one shape."""
    import cupy

    from .backend import get_engine

    rng = np.random.default_rng(0)
    k, v, dh = (cupy.asarray(rng.standard_normal(shape).astype(dtype)) for _ in range(3))
    h0 = cupy.zeros((shape[0], shape[2]), dtype=dtype)
    copies, rows = [copy_gbps(k.nbytes, repeats)], []
    for eng in engines:
        impl = get_engine(eng, cupy)[1]
        h = impl.min_gru(k, v, h0, log_space)
        tf = event_ms(lambda i=impl: i.min_gru(k, v, h0, log_space), repeats)
        tb = event_ms(lambda i=impl, h=h: i.min_gru_backward(k, v, h, dh, h0, log_space), repeats)
        rows += [_row(eng, shape, dtype, p, t, k.nbytes) for p, t in
                 (("fwd", tf), ("bwd", tb), ("fwd+bwd", tf + tb))]
        copies.append(copy_gbps(k.nbytes, repeats))
    if torch:
        rows += _torch_rows(k, v, dh, shape, dtype, repeats)
    return rows, statistics.median(copies)


def _torch_rows(k, v, dh, shape, dtype, repeats):
    """The paper's log-space minGRU in PyTorch (mincore.bench's listing) on the same arrays."""
    try:
        import torch

        from .bench import _torch_baselines
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for name, fwd, fwd_bwd in _torch_baselines(__import__("cupy"), k, v, dh):
        if name != "torch-logspace":
            continue  # nn.GRU is sequential: the parallel minGRU's baseline is the log-space listing
        tf, tfb = event_ms(fwd, repeats), event_ms(fwd_bwd, repeats)
        out += [_row(name, shape, dtype, p, t, k.nbytes) for p, t in
                (("fwd", tf), ("bwd", max(tfb - tf, 1e-9)), ("fwd+bwd", tfb))]
        torch.cuda.empty_cache()
    return out


def markdown(rows) -> str:
    dev = rows[0]["device"] if rows else "?"
    lines = [f"device: {dev}", "",
             "| engine | (B, T, D) | dtype | pass | ms | GB/s | % of copy | copy GB/s | x torch | plan |",
             "|" + "---|" * 10]
    for r in rows:
        xt = "" if r["x torch"] is None else f"{r['x torch']:.1f}x"
        lines.append(f"| {r['engine']} | {r['shape']} | {r['dtype']} | {r['pass']} | {r['ms']:.3f} | "
                     f"{r['GB/s']:.0f} | {r['% of copy']:.0f}% | {r['copy GB/s']:.0f} | {xt} | {r['plan']} |")
    return "\n".join(lines)
