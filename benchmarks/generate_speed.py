"""Generation speed: recurrent `step` mode (what `mincore generate` does) against re-running the
parallel forward over the growing sequence, per generated character.

    python benchmarks/generate_speed.py --checkpoint runs/shakespeare-mingru/checkpoint.h5 [--tokens 1000]

Step mode: `mincore.tasks.shakespeare.generate` timed end to end (prompt "\\n" + `--tokens` draws).
Re-running: a forward over lengths 1, 1 + s, 1 + 2s, ... < tokens (s = --stride) timed (median of 3)
and integrated, sum_L t(L) ~ s * sum over the sampled L: the cost of generating `tokens` characters by
recomputing the whole prefix for each one (sampling itself is negligible next to either).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mincore.autograd import no_grad
from mincore.tasks.shakespeare import generate, load_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--stride", type=int, default=50)
    args = ap.parse_args()
    model, vocab, meta = load_model(args.checkpoint)

    for _ in generate(model, vocab, "\n", 20, seed=0):  # warm-up: kernels compiled and loaded
        pass
    t0 = time.perf_counter()
    n = sum(1 for _ in generate(model, vocab, "\n", args.tokens, seed=0))
    step_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(vocab), size=(1, args.tokens))
    with no_grad():
        model(ids[:, :8])
        per_length = []
        for L in range(1, args.tokens + 1, args.stride):
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                model(ids[:, :L])
                ts.append(time.perf_counter() - t)
            per_length.append(statistics.median(ts))
    rerun_s = args.stride * sum(per_length)

    print(f"model: {meta['config'].get('model')} d {meta['config'].get('d_model')} x "
          f"{meta['config'].get('n_layers')} layers, checkpoint step {meta['step']}")
    print(f"| method | {n} characters | tokens/s |\n|---|---|---|")
    print(f"| recurrent step (mincore generate) | {step_s:.2f} s | {n / step_s:.0f} |")
    print(f"| re-run the parallel forward per character (integrated) | {rerun_s:.1f} s | {n / rerun_s:.1f} |")
    print(f"speed-up: {rerun_s / step_s:.1f}x; one forward at length {args.tokens - args.stride + 1}: "
          f"{per_length[-1] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
