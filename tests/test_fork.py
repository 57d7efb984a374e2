"""multiprocessing after a kernel call: fork, forkserver and spawn children all run the kernels.

numba's GNU OpenMP layer terminates a child forked after any parallel region; mincore asks numba for a
fork-safe layer (mincore/kernels/numba_threads.py) and serialises its launches, so threads may call it
concurrently too. Each case runs in a fresh interpreter: the layer is chosen once per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys, threading
    import numpy as np
    import mincore

    def child(q):
        k = np.zeros((2, 8, 16), np.float32)
        q.put(float(mincore.min_gru(k, k + 1).sum()))

    if __name__ == "__main__":
        k = np.zeros((4, 8, 16), np.float32)
        mincore.min_gru_backward(k, k, mincore.min_gru(k, k), k)   # the parent has run parallel kernels
        ctx = mp.get_context(sys.argv[1])
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        p.join(60)
        assert p.exitcode == 0, f"child exit code {p.exitcode}"
        k = np.zeros((2, 8, 16), np.float32)
        want = float(mincore.min_gru(k, k + 1, engine="numpy").sum())
        got = q.get(timeout=5)
        assert abs(got - want) < 1e-4 * want, (got, want)
        # threads launching at the same time (workqueue would abort the process unserialised)
        errs = []
        def work():
            try:
                x = np.ones((8, 64, 32), np.float32)
                for _ in range(20):
                    mincore.min_gru_backward(x, x, mincore.min_gru(x, x), x)
            except Exception as e:  # pragma: no cover
                errs.append(e)
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert not errs, errs
        print("ok")
""")


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_children_run_kernels_after_the_parent_did(tmp_path, method):
    script = tmp_path / "fork_case.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), \
        f"{method}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
