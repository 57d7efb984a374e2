"""Interleaved medians for the adapter benchmarks (benchmarks/torch_adapter.py, jax_adapter.py): the
cases run in turn, one call each per round, so a machine whose speed drifts slows them alike and the
ratios in one table stay comparable. Beside each wall-clock median: the process's user and system CPU
seconds and minor page faults of the same call (medians), so kernel work, the kernel's page handling
(first touch of freshly mapped outputs) and waiting for a core can be told apart."""

from __future__ import annotations

import resource
import statistics
import time


def timed(fn) -> tuple[float, float, float, int]:
    """(wall s, user CPU s, system CPU s, minor page faults) of one call fn()."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return t, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def medians(cases: dict, runs: int, ref_runs: int, slow: str) -> dict:
    """name -> (median wall s, runs, median user s, median system s, median faults) after one warm-up
    call each (numba compiles, pages are touched); cases whose name starts with `slow` stop after
    ref_runs rounds, each followed by an untimed call of every other case (what runs right after a
    slow case that freed gigabytes would otherwise carry its cost into that case's median)."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for r in range(runs):
        for name, fn in cases.items():
            if r < ref_runs or not name.startswith(slow):
                times[name].append(timed(fn))
        if r < ref_runs:  # a slow case's gigabytes of freed temporaries and spinning threads linger:
            for name, fn in cases.items():  # one untimed call of each fast case lets them settle
                if not name.startswith(slow):
                    fn()
    return {name: (statistics.median(x[0] for x in t), len(t), *(statistics.median(x[i] for x in t)
                                                                  for i in (1, 2, 3)))
            for name, t in times.items()}


def table(title: str, results: dict, base: str) -> None:
    """A markdown table of `results` with each median's ratio to the `base` row."""
    print(f"\n{title}")
    print(f"| {'':32} | {'median':>10} | runs | vs {base} | user CPU | system CPU | page faults |")
    print(f"|{'-' * 34}|{'-' * 12}|------|{'-' * (len(base) + 5)}|----------|------------|-------------|")
    ref = results[base][0]
    for name, (sec, n, user, system, faults) in results.items():
        print(f"| {name:32} | {sec * 1e3:7.1f} ms | {n:4} | {sec / ref:6.2f}x | {user * 1e3:5.0f} ms | "
              f"{system * 1e3:7.0f} ms | {faults:11.0f} |")
