"""Generation speed of a Shakespeare checkpoint: the fused step (every block in one compiled call per
token, what `mincore generate` runs) against the per-operation step (model.step) in the same run,
at batch 1 and batched, and the prompt read by fused steps against one parallel forward.

    python benchmarks/generate_speed.py --checkpoint runs/shakespeare-mingru/checkpoint.h5 [--tokens 5000]
    python benchmarks/generate_speed.py --untrained minlstm     # the default preset's model, initial weights

Each figure is the median of --repeats runs, the paths interleaved run by run so that a busy machine
slows both alike; characters per second of wall time and per CPU second of this process (on a
shared machine the second says what the code costs, the first what the user got). Sampling as
`mincore generate` does: temperature 0.8, seed 0, prompt "\\n", after a warm-up of each path (kernels
compiled and loaded). --cli also times `mincore generate` itself (start-up and prompt included),
--rerun the recurrence's point: re-running the parallel forward over the growing text per character.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from mincore.autograd import no_grad
from mincore.generation import generate_tokens
from mincore.inference import FusedStepper
from mincore.tasks import shakespeare as S


def timed(fn):
    """(wall seconds, CPU seconds) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rates(runs: dict, repeats: int) -> dict:
    """name -> (chars, fn): the median wall and CPU seconds over `repeats` interleaved rounds."""
    got = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (_, fn) in runs.items():
            got[name].append(timed(fn))
    return {name: (runs[name][0], statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
            for name, ts in got.items()}


def table(title, results):
    print(f"\n{title}\n| path | characters | wall s | chars/s (wall) | chars/s (CPU) |\n|---|---|---|---|---|")
    for name, (n, w, c) in results.items():
        print(f"| {name} | {n} | {w:.3f} | {n / w:,.0f} | {n / c:,.0f} |")


def gen(model, n, batch=1, stepper=None):
    return lambda: sum(1 for _ in generate_tokens(model, [0], n, batch=batch, temperature=0.8, seed=0,
                                                  stepper=stepper))


def products(st: FusedStepper):
    """A function running only the matrix-vector products of one fused token (every block's input,
    output and MLP matrices and the head, batch 1, in turn): what reading the weights costs."""
    from numba import njit

    from mincore import inference_jit as J

    mats = []
    for i in range(st.L[J.N_BLOCKS]):
        b = st.L[J.HEAD + i * J.BLOCK:J.HEAD + (i + 1) * J.BLOCK]
        n = b[J.INNER] * (2 if b[J.CELL] != J.LSTM else 3)
        n_out = n if b[J.CELL] == J.LRU else b[J.INNER]  # the LRU's C reads the (2N,) state pairs
        mats += [(b[J.HID_W], st.d, n)] + ([(b[J.OUT_W], n_out, st.d)] if b[J.OUT_W] >= 0 else [])
        if b[J.MLP]:
            mats += [(b[J.FC1_W], st.d, b[J.MLP_HIDDEN]), (b[J.FC2_W], b[J.MLP_HIDDEN], st.d)]
    mats.append((st.L[J.HEAD_W], st.d, st.n_out))
    M = np.array(mats, np.int64)
    x = np.ones((1, M[:, 1:].max()), st.dtype)
    y = np.empty_like(x)

    @njit
    def run(P, M, x, y, n):
        for _ in range(n):
            for k in range(M.shape[0]):
                J.linear(P, M[k, 0], -1, x, y, 1, M[k, 1], M[k, 2])
    run(st.P, M, x, y, 1)
    macs = int((M[:, 1] * M[:, 2]).sum())
    return macs, lambda n: run(st.P, M, x, y, n)


def threads(n):
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(n)
    return threadpool_limits(limits=n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--untrained", choices=S.MODELS, help="the default preset's model with that cell and its "
                     "initial weights (speed does not depend on the weights), vocabulary 65")
    ap.add_argument("--tokens", type=int, default=5000, help="characters per fused run")
    ap.add_argument("--ops-tokens", type=int, default=1000, help="characters per per-operation run")
    ap.add_argument("--batch", type=int, default=16, help="rows of the batched runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time `mincore generate` (start-up included)")
    ap.add_argument("--rerun", action="store_true", help="also the re-run-the-forward comparison (slow)")
    a = ap.parse_args()
    if a.checkpoint:
        model, vocab, meta = S.load_model(a.checkpoint)
    else:
        cfg = S.config("default", model=a.untrained)
        vocab = S.Vocab("".join(chr(48 + i) for i in range(65)))
        model, meta = S.build_model(cfg, len(vocab)).eval(), {"config": vars(cfg), "step": 0}
    st = FusedStepper.from_model(model)
    c = meta["config"]
    print(f"model: {c.get('model')} d {c.get('d_model')} x {c.get('n_layers')} layers, checkpoint step "
          f"{meta['step']}, {st.P.size * st.P.itemsize / 2**20:.2f} MiB of {st.dtype} weights; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    with threads(1):
        for s in (st, None):
            gen(model, 20, 1, s)(), gen(model, 2, a.batch, s)()  # warm-up
        table("batch 1, one thread", rates({"fused step": (a.tokens, gen(model, a.tokens, 1, st)),
                                            "per-operation step": (a.ops_tokens, gen(model, a.ops_tokens))},
                                           a.repeats))
        macs, run = products(st)
        t = rates({"p": (a.tokens, lambda: run(a.tokens))}, a.repeats)["p"]
        print(f"\nthe products alone ({len(st.P) * st.P.itemsize / 2**20:.2f} MiB of weights read, {macs:,} "
              f"multiply-adds a token): {t[2] / a.tokens * 1e6:.0f} us a token per CPU second, "
              f"{a.tokens / t[2]:,.0f} tokens per CPU second, {macs * a.tokens / t[2] / 1e9:.1f} G multiply-adds/s")
        prompt = np.random.default_rng(0).integers(0, len(vocab), 1000)
        with no_grad():
            table("reading a 1,000-character prompt, one thread", rates({
                "fused steps": (1000, lambda: [st.step(np.array([t]), S) for S in [st.state(None, 1)]
                                               for t in prompt]),
                "one parallel forward": (1000, lambda: model(prompt[None]))}, a.repeats))
    B, n = a.batch, max(a.ops_tokens // a.batch, 20)
    runs = {}
    for k in sorted({1, os.cpu_count() or 1}):
        with threads(k):
            gen(model, 2, B, st)()
            runs |= rates({f"fused step, {k} thread(s)": (n * B, gen(model, n, B, st)),
                           f"per-operation step, {k} thread(s)": (n * B, gen(model, n, B))}, a.repeats)
    table(f"batch {B} ({n} characters per row)", runs)
    if a.cli and a.checkpoint:
        cli(a.checkpoint, a.tokens)
    if a.rerun:
        with threads(1):
            rerun(model, vocab, a.ops_tokens)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def cli(checkpoint, tokens):
    print(f"\n`mincore generate --tokens {tokens} --seed 0` (start-up and prompt pass included):")
    for step in ("fused", "ops"):
        r = subprocess.run([sys.executable, "-c", "from mincore.cli.main import main; main()", "generate",
                            "--checkpoint", checkpoint, "--tokens", str(tokens), "--seed", "0", "--step", step],
                           capture_output=True, text=True, check=True)
        print(f"  --step {step}: {r.stderr.strip().splitlines()[-1]}")


@no_grad()
def rerun(model, vocab, tokens, stride=50):
    """sum over L of a forward at length L, integrated from lengths 1, 1 + stride, ...: the cost of
    generating `tokens` characters by re-reading the whole prefix for each one."""
    ids = np.random.default_rng(0).integers(0, len(vocab), size=(1, tokens))
    model(ids[:, :8])
    per = [statistics.median(timed(lambda L=L: model(ids[:, :L]))[0] for _ in range(3))
           for L in range(1, tokens + 1, stride)]
    s = stride * sum(per)
    print(f"\nre-running the parallel forward per character (integrated, {tokens} characters): {s:.1f} s, "
          f"{tokens / s:.1f} chars/s; one forward at length {tokens - stride + 1}: {per[-1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
