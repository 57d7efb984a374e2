"""Shared by the rl tests: whether gymnasium's MuJoCo simulators import here, and tiny D4RL-layout files."""

from __future__ import annotations

import h5py
import numpy as np

from mincore.tasks.rl import collect as rl_collect

try:
    rl_collect.require_gym()
    HAVE_GYM, WHY = True, ""
except RuntimeError as e:
    HAVE_GYM, WHY = False, str(e)


def hopper_file(path, n_eps=6, length=10, seed=0) -> str:
    """hopper-shaped D4RL-layout data whose episode i earns reward i per step (returns rise with i)."""
    n = n_eps * length
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, 11)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        f["rewards"] = np.repeat(np.arange(n_eps, dtype=np.float32), length)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % length == length - 1
        f.attrs["env"] = "hopper"
    return str(path)
