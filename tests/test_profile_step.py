"""benchmarks/profile_step.py: it profiles the copy task's training step and its timers see the
kernels (at the engine interface) and the matrix products (ops.matmul_timer)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

from mincore import cells
from mincore.backend import get_engine

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kernel_timer_times_the_engine_calls_and_restores_them():
    ps = _load()
    _, impl = get_engine(None, np)
    before = impl.min_gru
    k = v = np.zeros((1, 3, 2), np.float32)
    with ps.kernel_timer(impl) as tally:
        cells.min_gru(k, v)
        assert tally["kernels"] > 0
    assert impl.min_gru is before


def test_profile_of_a_tiny_copy_step(capsys):
    _load().main(["--batch", "2", "--seq", "34", "--d-model", "4", "--expansion", "1", "--steps", "1", "--ftz"])
    out = capsys.readouterr().out
    assert "selective-copy step (default preset): cell=mingru batch=2 seq=34" in out
    shares = {name: float(re.search(name + r" +[\d.]+ ms +([\d.]+) %", out).group(1))
              for name in ("recurrent kernels", "matrix products")}
    assert all(v > 0 for v in shares.values()), out
