"""Interleaved medians for the adapter benchmarks (benchmarks/torch_adapter.py, jax_adapter.py): the
cases run in turn, one call each per round, so a machine whose speed drifts slows them alike and the
ratios in one table stay comparable."""

from __future__ import annotations

import statistics
import time


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def medians(cases: dict, runs: int, ref_runs: int, slow: str) -> dict:
    """name -> (median seconds, runs) after one warm-up call each (numba compiles, pages are touched);
    cases whose name starts with `slow` stop after ref_runs rounds."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for r in range(runs):
        for name, fn in cases.items():
            if r < ref_runs or not name.startswith(slow):
                times[name].append(timed(fn))
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


def table(title: str, results: dict, base: str) -> None:
    """A markdown table of `results` with each median's ratio to the `base` row."""
    print(f"\n{title}")
    print(f"| {'':32} | {'median':>10} | runs | vs {base} |")
    print(f"|{'-' * 34}|{'-' * 12}|------|{'-' * (len(base) + 5)}|")
    ref = results[base][0]
    for name, (sec, n) in results.items():
        print(f"| {name:32} | {sec * 1e3:7.1f} ms | {n:4} | {sec / ref:6.2f}x |")
