"""The rl task on a file in the genuine D4RL layout (no attributes, (N, 1) columns): the paper preset
builds unchanged and takes a training step; presets follow the paper's per-dataset settings."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mincore.tasks import rl


def _d4rl_file(path, n=300, obs=11, act=3):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:  # as D4RL ships them: float32 arrays, flags as (N,) bools
        f["observations"] = rng.standard_normal((n, obs)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, act)).astype(np.float32)
        f["rewards"] = rng.random((n, 1)).astype(np.float32)
        f["terminals"] = np.zeros(n, bool)
        t = np.zeros(n, bool)
        t[99::100] = True
        f["timeouts"] = t
        f["infos/qpos"] = np.zeros((n, 6), np.float32)  # extra D4RL groups are ignored


def test_paper_preset_runs_on_a_d4rl_file(tmp_path):
    _d4rl_file(tmp_path / "hopper-medium-v2.hdf5")
    cfg = rl.config("paper", env="hopper", kind="medium", dataset=str(tmp_path / "hopper-medium-v2.hdf5"),
                    eval_windows=4)
    assert (cfg.d_model, cfg.lr, cfg.K, cfg.steps, cfg.warmup, cfg.batch_size) == (256, 1e-4, 20, 100_000,
                                                                                  10_000, 64)
    task = rl.RLTask(cfg)
    assert len(task.data.episodes) == 3 and len(task.train_data.episodes) == 2
    loss, _ = task.loss(task.batch(np.random.default_rng(0), 2))
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(task.evaluate()["loss"])


@pytest.mark.parametrize("env, kind, d, lr", [("halfcheetah", "medium-replay", 128, 1e-3),
                                              ("walker2d", "medium", 128, 1e-4),
                                              ("hopper", "medium-replay", 256, 1e-4)])
def test_paper_settings_per_dataset(env, kind, d, lr):
    cfg = rl.config("paper", env=env, kind=kind)
    assert (cfg.d_model, cfg.lr) == (d, lr)
    assert rl.config("paper", env=env, kind=kind, lr=5e-4).lr == 5e-4  # given values win


def test_bad_config_refused():
    with pytest.raises(ValueError, match="model must be one of"):
        rl.config("default", model="lstm").validate()
    with pytest.raises(ValueError, match="unknown preset"):
        rl.config("huge")


def test_imports_without_gymnasium_and_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gymnasium", None)  # `import gymnasium` now raises ImportError
    from mincore.tasks.rl import collect as rl_collect

    with pytest.raises(RuntimeError, match=r"pip install 'mincore\[rl\]'"):
        rl_collect.make_env("hopper")


def test_force_replaces_a_run(tmp_path, monkeypatch):
    """train(force=True) reaches the training loop: a folder holding a run is replaced, not refused.
    The simulator is stubbed out: here only the loop's handling of the folder is under test."""
    import dataclasses

    from mincore.tasks.rl import task as rl_task

    monkeypatch.setattr(rl_task.rl_collect, "require_gym", lambda: None)
    monkeypatch.setattr(rl_task, "_scores", lambda *args: {"scored": True})
    _d4rl_file(tmp_path / "d.hdf5", obs=3, act=2)
    cfg = rl.config("default", model="bc", env="hopper", dataset=str(tmp_path / "d.hdf5"), steps=1, eval_every=1,
                    batch_size=2, eval_windows=2, bc_hidden=8)
    out = tmp_path / "run"
    assert rl.train(cfg, out, progress=False)["steps"] == 1
    with pytest.raises(FileExistsError, match="force"):
        rl.train(cfg, out, progress=False)
    s = rl.train(dataclasses.replace(cfg, steps=2, eval_every=2), out, force=True, progress=False)
    assert s["steps"] == 2 and s["scored"]
    with pytest.raises(ValueError, match="resume=True .* force=True"):
        rl.train(cfg, out, resume=True, force=True, progress=False)
