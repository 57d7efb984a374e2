"""Runs tests/cudasim_suite.py (the numba-cuda kernels under numba's CUDA simulator) in its own
pytest process: NUMBA_ENABLE_CUDASIM has to be set before numba is first imported, which this
process has long done. The simulator ships with numba itself (numba.cuda), so this runs in CI on
machines without a GPU; it is never skipped. About 50 s on a 2-core machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("cudasim_suite.py")


@pytest.mark.cudasim
def test_numba_cuda_kernels_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "MINCORE_ENGINE": ""}
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-q", "-p", "no:cacheprovider", "-rfEs"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                       cwd=SUITE.parent.parent)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"simulator suite failed ({' '.join(cmd)}):\n{out[-20000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 50, f"simulator suite ran too few tests:\n{out[-5000:]}"
    assert not re.search(r"\d+ skipped", out), f"simulator suite skipped tests:\n{out[-5000:]}"
