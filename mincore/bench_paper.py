"""The efficiency figure of "Were RNNs All We Needed?" (Feng et al. 2024, Fig. 1), measured here.

One training step of one recurrent layer (input size = hidden size H, batch first, float32): forward,
a scalar loss (the sum of the outputs) and backward, with the gradient of the input too (as for any
layer but the first). For each sequence length T: the step's median time over `repeats` runs after
two warm-ups (the models of one framework interleaved, so that a busy neighbour slows them alike),
and the step's peak memory, measured in a separate run: the most bytes it held at once beyond what
existed before it (its inputs and weights are not counted).

Models: mingru, minlstm (mincore.layers.MinGRU / MinLSTM, the parallel-scan kernels), gru, lstm
(mincore.layers.GRU / LSTM, sequential, backpropagation through time) and, when torch imports,
torch-gru, torch-lstm (torch.nn.GRU / nn.LSTM) and torch-mingru (the paper's log-space minGRU listing,
appendix B, with its input Linear).
Memory: CPU mincore, tracemalloc (NumPy reports its buffers to it); CPU torch, the allocations in the
torch profiler's record; GPU mincore, the blocks the CuPy memory pool hands out and takes back; GPU
torch, torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy as np

from .backend import cpu_threads

MODELS = ("mingru", "minlstm", "gru", "lstm", "torch-mingru", "torch-gru", "torch-lstm")
SEQUENTIAL = ("gru", "lstm", "torch-gru", "torch-lstm")
# (parallel, sequential) pairs of the speed-up: within each framework, and mincore's against torch's
PAIRS = (("mingru", "gru"), ("minlstm", "lstm"), ("torch-mingru", "torch-gru"), ("mingru", "torch-gru"),
         ("minlstm", "torch-lstm"))
LENGTHS = tuple(2 ** k for k in range(6, 13))  # 64 .. 4096
LONG_LENGTHS = (8192, 16384)  # the parallel models only
QUICK_LENGTHS = (64, 256, 512)
HIDDEN, BATCH, REPEATS = 256, 64, 3
# the paper's T4 figures (batch 64, plain PyTorch): step ms of the parallel models, speed-up over the
# sequential ones, and memory of the parallel models relative to the sequential ones
PAPER_MS = {"mingru": {512: 2.72, 4096: 3.25}, "minlstm": {512: 2.97, 4096: 3.41}}
PAPER_SPEEDUP = {"mingru": {512: 175, 4096: 1324}, "minlstm": {512: 235, 4096: 1361}}
PAPER_MEMORY_RATIO = 1.88


# ------------------------------------------------------------------------------ devices
def array_module(device: str):
    """numpy for "cpu", cupy for "gpu"; a ValueError in one line when no GPU is usable."""
    if device == "cpu":
        return np
    if device != "gpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    from mincore.backend import engines

    cupy = engines()["cupy"]
    if not cupy["available"]:
        raise ValueError(f"device 'gpu' needs CuPy on a CUDA device: {cupy['reason']}")
    import cupy as cp

    return cp


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name and how many CPUs this process may use."""
    if device == "gpu":
        import cupy as cp

        return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
    import platform

    from mincore.backend import cpu_count

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {cpu_count()} CPUs"


def import_torch():
    """torch, or None when it is not installed (never imported by mincore itself)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# ------------------------------------------------------------------------------ steps
def mincore_step(model: str, x, hidden: int):
    """A closure running one training step of mincore's `model` on x (B, T, hidden)."""
    from mincore.autograd import Tensor
    from mincore.backend import get_array_module
    from mincore.layers import GRU, LSTM, MinGRU, MinLSTM

    layer = {"mingru": MinGRU, "minlstm": MinLSTM, "gru": GRU, "lstm": LSTM}[model](hidden)
    if get_array_module(x) is not np:
        layer.to(xp=get_array_module(x))  # the weights onto the device
    inp = Tensor(x, requires_grad=True)

    def step():
        y, _ = layer(inp)
        y.sum().backward()
        layer.zero_grad()
        inp.grad = None
    return step


def torch_step(model: str, x, hidden: int, torch):
    """The same step for torch's `model`, on a torch copy of x (CUDA when x is a CuPy array)."""
    dev = "cpu" if isinstance(x, np.ndarray) else "cuda"
    F = torch.nn.functional
    inp = torch.as_tensor(x, device=dev).requires_grad_()
    if model == "torch-mingru":
        lin = torch.nn.Linear(hidden, 2 * hidden).to(dev)

        def log_g(v):
            return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))

        def layer(v):  # Feng et al. 2024, appendix B, with h0 = 0 (log h0 = -inf drops out)
            k, hx = lin(v).chunk(2, dim=-1)
            log_coeffs, log_values = -F.softplus(k), -F.softplus(-k) + log_g(hx)
            a_star = torch.cumsum(log_coeffs, dim=1)
            return torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=1))
        params = list(lin.parameters())
    else:
        rnn = {"torch-gru": torch.nn.GRU, "torch-lstm": torch.nn.LSTM}[model](hidden, hidden, batch_first=True)
        rnn = rnn.to(dev)

        def layer(v):
            return rnn(v)[0]
        params = list(rnn.parameters())

    def step():
        layer(inp).sum().backward()
        for p in (*params, inp):
            p.grad = None
    return step


def sync_for(xp, torch):
    """A function that waits for the device (the host clock times GPU work only after it)."""
    def sync():
        if xp is not np:
            xp.cuda.Device().synchronize()
            if torch is not None:
                torch.cuda.synchronize()
    return sync


def median_ms(steps: dict, repeats: int, sync, warmup: int = 2) -> dict:
    """Median ms per step over `repeats` rounds, each round running every step once, after `warmup`
    rounds (torch's CPU LSTM is still slow on its second call at a new shape)."""
    times = {m: [] for m in steps}
    for i in range(warmup + repeats):
        for m, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
    return {m: 1e3 * statistics.median(ts) for m, ts in times.items()}


# ------------------------------------------------------------------------------ peak memory
def peak_tracemalloc(step) -> int:
    """Peak bytes a CPU step allocates (NumPy buffers included: NumPy reports them to tracemalloc).
    The kernels' memory pool first releases its free blocks, so that the step allocates, and the
    trace counts, every output it holds (a block reused from an earlier step would not be counted)."""
    from .kernels.buffers import POOL

    POOL.free_all_blocks()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()


def peak_torch_cpu(step, torch) -> int | None:
    """Peak bytes a torch CPU step allocates: the running sum of the allocations and frees that the
    profiler records (torch's CPU allocator does not report to tracemalloc); None if this torch's
    profiler does not expose them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        peak = max(peak, now)
    return peak


def peak_cupy(step, cupy) -> int:
    """Peak bytes a GPU step takes from the CuPy memory pool (blocks handed out minus blocks returned)."""
    class Peak(cupy.cuda.MemoryHook):
        name = "mincore-bench-peak"

        def __init__(self):
            self.now = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.now += kw["mem_size"]
            self.peak = max(self.peak, self.now)

        def free_postprocess(self, **kw):
            self.now -= kw["mem_size"]

    cupy.cuda.Device().synchronize()
    with Peak() as hook:
        step()
        cupy.cuda.Device().synchronize()
    return hook.peak


def peak_torch_cuda(step, torch) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_bytes(model: str, step, xp, torch):
    if model.startswith("torch"):
        return peak_torch_cpu(step, torch) if xp is np else peak_torch_cuda(step, torch)
    return peak_tracemalloc(step) if xp is np else peak_cupy(step, xp)


# ------------------------------------------------------------------------------ the figure
def models_at(T: int, models, sequential_max: int, torch) -> list[str]:
    """The models timed at length T: sequential ones up to sequential_max, torch's when it imports."""
    return [m for m in models if (m not in SEQUENTIAL or T <= sequential_max)
            and (torch is not None or not m.startswith("torch"))]


def run(device="cpu", lengths=LENGTHS + LONG_LENGTHS, batch=BATCH, hidden=HIDDEN, repeats=REPEATS,
        sequential_max=LENGTHS[-1], models=MODELS, threads=None, log=None):
    """Rows {model, T, B, hidden, device, ms, peak_mb} of every model at every length (see models_at);
    threads: at most that many CPU threads (cpu_threads), None for every one."""
    for name, value in (("batch", batch), ("hidden", hidden), ("repeats", repeats), ("threads", threads or 1),
                        ("lengths", min(lengths, default=0))):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {tuple(lengths) if name == 'lengths' else value}")
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; expected one of {', '.join(MODELS)}")
    xp, torch = array_module(device), import_torch()
    if torch is not None and xp is not np and not torch.cuda.is_available():
        torch = None  # a CPU-only torch next to CuPy: no torch rows on the GPU
    with cpu_threads(threads, torch):
        return [row for T in lengths
                for row in _rows_at(T, xp, torch, batch, hidden, repeats, sequential_max, models, device, log)]


def _rows_at(T, xp, torch, batch, hidden, repeats, sequential_max, models, device, log) -> list[dict]:
    """The rows of every model that runs at length T (models_at)."""
    names = models_at(T, models, sequential_max, torch)
    x = xp.asarray(np.random.default_rng(T).standard_normal((batch, T, hidden), dtype=np.float32))
    steps = {m: torch_step(m, x, hidden, torch) if m.startswith("torch") else mincore_step(m, x, hidden)
             for m in names}
    if log:
        log(f"T = {T}: {', '.join(names)}")
    ms = {}
    for torch_ones in (False, True):  # one framework at a time: their thread pools do not take turns
        ms.update(median_ms({m: f for m, f in steps.items() if m.startswith("torch") == torch_ones}, repeats,
                            sync_for(xp, torch)))
    rows = []
    for m in names:
        peak = peak_bytes(m, steps[m], xp, torch)
        rows.append({"model": m, "T": T, "B": batch, "hidden": hidden, "device": device, "ms": ms[m],
                     "peak_mb": None if peak is None else peak / 2 ** 20})
    return rows


def speedups(rows) -> list[dict]:
    """{model, over, T, speedup, memory_ratio} of each parallel model against its sequential one."""
    at = {(r["model"], r["T"]): r for r in rows}
    out = []
    for T in sorted({r["T"] for r in rows}):
        for m, seq in PAIRS:
            r, s = at.get((m, T)), at.get((seq, T))
            if r is None or s is None:
                continue
            mem = None if r["peak_mb"] is None or not s["peak_mb"] else r["peak_mb"] / s["peak_mb"]
            out.append({"model": m, "over": seq, "T": T, "speedup": s["ms"] / r["ms"], "memory_ratio": mem})
    return out


def markdown(rows) -> str:
    """Step ms / peak MB per model (columns) and length (rows), then the speed-ups."""
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    at = {(r["model"], r["T"]): r for r in rows}
    lines = ["| T | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    def cell(r):
        mb = "-" if r["peak_mb"] is None else f"{r['peak_mb']:,.0f} MB"
        return f"{r['ms']:,.1f} ms / {mb}"
    for T in sorted({r["T"] for r in rows}):
        lines.append(f"| {T} | " + " | ".join(cell(at[m, T]) if (m, T) in at else "" for m in models) + " |")
    sp = speedups(rows)
    if sp:
        lines += ["", "| T | model | over | speed-up | memory ratio |", "|---|---|---|---|---|"]
        lines += [f"| {s['T']} | {s['model']} | {s['over']} | {s['speedup']:.1f}x | "
                  + ("-" if s["memory_ratio"] is None else f"{s['memory_ratio']:.2f}") + " |" for s in sp]
    return "\n".join(lines)


def plot(rows, path: str, title: str = "") -> None:
    """The paper's Fig. 1 as three panels against T (log axes): step time, speed-up of each parallel
    model over its sequential one, peak memory; the paper's T4 figures as black stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s, ax_m) = plt.subplots(1, 3, figsize=(16, 6))
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    for m in models:
        mine = sorted((r["T"], r["ms"], r["peak_mb"]) for r in rows if r["model"] == m)
        style = "--" if m in SEQUENTIAL else "-"
        ax_t.plot([t for t, _, _ in mine], [ms for _, ms, _ in mine], style, marker="o", label=m)
        mem = [(t, mb) for t, _, mb in mine if mb is not None]
        ax_m.plot([t for t, _ in mem], [mb for _, mb in mem], style, marker="o", label=m)
    sp = speedups(rows)
    for m, seq in PAIRS:
        mine = [(s["T"], s["speedup"]) for s in sp if s["model"] == m and s["over"] == seq]
        if mine:
            cross = seq.startswith("torch") and not m.startswith("torch")  # mincore over torch: dotted
            ax_s.plot([t for t, _ in mine], [v for _, v in mine], ":" if cross else "-", marker="o",
                      label=f"{m} over {seq}")
    for ax, paper, label in ((ax_t, PAPER_MS, "paper T4: minGRU, minLSTM"),
                             (ax_s, PAPER_SPEEDUP, "paper T4: over GRU, LSTM")):
        for i, figs in enumerate(paper.values()):
            ax.plot(list(figs), list(figs.values()), "k*", ms=11, label=None if i else label)
    ax_m.text(0.02, 0.97, f"paper T4: parallel models use {PAPER_MEMORY_RATIO:.2f}x\nthe memory of GRU / LSTM",
              transform=ax_m.transAxes, va="top", fontsize=8)
    for ax, label in ((ax_t, "training step (ms)"), (ax_s, "speed-up (x)"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: no point hidden
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
