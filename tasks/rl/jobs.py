"""The runs of `mincore rl table`: one at a time in this process, or `jobs` at a time in worker
processes (`--jobs N`), each run on one thread as `mincore train --task rl` runs it.

Every run depends only on its settings and seed, so a table gives the same numbers for any `jobs`
(tests/test_rl_table.py). Stopping: workers run in their own process group, so a terminal's Ctrl-C
reaches this process only. On SIGINT or SIGTERM it sets a shared event; in each worker a run in
progress then gets one SIGINT from its own watcher thread (the training loop finishes its step,
checkpoints and returns, as a run in one process does), runs not started never start, and when the
running ones are back this process raises TableInterrupted. The same command continues every
interrupted run from its checkpoint. Idle workers get no signal (one would break the pool and take
the running ones with it). A run that fails stops the others the same way before its error is
raised, so no worker is left training behind an error message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import task as rl_task

__all__ = ["Job", "TableInterrupted", "run_one", "run_parallel"]


class TableInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the table's runs in progress (their checkpoints are saved); the same
    table command continues them, then the rest."""


@dataclass(frozen=True)
class Job:
    index: int               # the run's place in the table (1-based), for its lines and its cell
    head: str                # "[3/36] halfcheetah medium Decision-minLSTM seed 2"
    cfg: rl_task.RLConfig
    folder: Path
    state: str               # "stopped": continue its checkpoint; "new": train from step 0 (replacing)

    def start_line(self) -> str:
        what = "continuing the interrupted run in" if self.state == "stopped" else "training into"
        return f"{self.head}: {what} {self.folder}"


def _train(job: Job, progress: bool) -> dict:
    return rl_task.train(job.cfg, job.folder, resume=job.state == "stopped", force=job.state == "new",
                         progress=progress)


def run_one(job: Job, progress: bool, say) -> dict:
    """Train (or continue) one run in this process; its summary. TableInterrupted when stopped."""
    say(job.start_line())
    t0 = time.perf_counter()
    s = _train(job, progress)
    if s["status"] == "interrupted":
        raise TableInterrupted(f"{job.head}: interrupted at step {s['steps']} ({s['signal']}), checkpoint "
                               f"saved; the same command continues this run, then the rest of the table")
    say(f"{job.head}: normalised score {s['normalized_score']:.1f} ({time.perf_counter() - t0:.0f} s)")
    return s


_STOP = None  # a worker's multiprocessing.Event: set by the table's process to stop every run


def _init_worker(stop) -> None:
    global _STOP
    _STOP = stop
    if hasattr(os, "setpgrp"):  # POSIX
        os.setpgrp()  # a terminal's Ctrl-C reaches the table's process only; it decides what workers get


def _watch(finished: threading.Event) -> None:
    """While a run is in progress: once the table asks to stop, SIGINT to this process, once. In the
    training loop that is its Ctrl-C (finish the step, checkpoint, return); before or after the loop
    it raises KeyboardInterrupt, which loses no training."""
    while not finished.wait(0.1):
        if _STOP is not None and _STOP.is_set():
            os.kill(os.getpid(), signal.SIGINT)
            return


def _worker(job: Job) -> tuple[dict, float]:
    from mincore.backend import cpu_threads, keep_freed_memory

    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt  # the table stopped before this run began
    finished = threading.Event()
    watcher = threading.Thread(target=_watch, args=(finished,), daemon=True)
    watcher.start()
    try:
        keep_freed_memory()
        t0 = time.perf_counter()
        with cpu_threads(rl_task.THREADS):
            return _train(job, progress=False), time.perf_counter() - t0
    finally:
        finished.set()
        watcher.join()  # no signal from it after this run


def run_parallel(todo: list[Job], jobs: int, say) -> dict[int, dict]:
    """Train `todo` in `jobs` worker processes; {job.index: summary}. TableInterrupted when stopped."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    stop, signals = ctx.Event(), []
    prev = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals keep their handlers there
        for sig in (signal.SIGINT, signal.SIGTERM):
            prev[sig] = signal.signal(sig, lambda signum, frame: signals.append(signum))
    results, stopped, error = {}, [], None
    try:
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(stop,)) as pool:
            futures = {pool.submit(_worker, job): job for job in todo}
            say(f"{len(todo)} runs, {jobs} at a time (one thread each); a line as each one ends")
            while futures:
                finished, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                if (signals or error is not None) and not stop.is_set():
                    stop.set()  # a failed run stops the others too, checkpointed
                    for f in futures:
                        f.cancel()  # runs not started yet never start
                for f in finished:
                    job = futures.pop(f)
                    if f.cancelled():
                        continue
                    try:
                        s, wall = f.result()
                    except KeyboardInterrupt:  # not training yet, or scoring: the next command redoes that
                        stopped.append((job.index, None))
                        continue
                    except Exception as e:  # noqa: BLE001 - raised below, once every worker has stopped
                        error = error or e
                        continue
                    if s["status"] == "interrupted":
                        stopped.append((job.index, f"{job.head} at step {s['steps']}"))
                        continue
                    results[job.index] = s
                    say(f"{job.head}: normalised score {s['normalized_score']:.1f} ({wall:.0f} s)")
    finally:
        for sig, handler in prev.items():
            signal.signal(sig, handler)
    if error is not None:
        raise error  # the runs it stopped continue from their checkpoints on the next command
    if signals or stopped:
        saved = "; ".join(text for _, text in sorted(stopped) if text)
        saved = f"checkpoints saved: {saved}; " if saved else ""
        name = signal.Signals(signals[0]).name if signals else "SIGINT"
        raise TableInterrupted(f"interrupted ({name}); {saved}the same command "
                               "continues the interrupted runs, then the rest of the table")
    return results
