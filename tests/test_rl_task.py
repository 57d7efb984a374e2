"""The rl task on a file in the genuine D4RL layout (no attributes, (N, 1) columns): the paper preset
builds unchanged and takes a training step; presets follow the paper's per-dataset settings."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
from rl_files import hopper_file

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


def test_pbc_trains_on_the_best_episodes_with_all_training_statistics(tmp_path):
    path = hopper_file(tmp_path / "d.h5", n_eps=20, seed=1)
    cfg = rl.config("default", model="pbc", env="hopper", dataset=path, val_fraction=0.1, eval_windows=4,
                    pbc_fraction=0.2)
    task, bc = rl.RLTask(cfg), rl.RLTask(dataclasses.replace(cfg, model="bc"))
    full = bc.train_data  # 18 training episodes (2 held out)
    assert len(full.episodes) == 18 and len(task.train_data.episodes) == 3  # 20% of 180 steps: 3 episodes
    assert task.train_data.returns.min() > np.sort(full.returns)[-4]  # the 3 best training episodes
    np.testing.assert_array_equal(task.train_data.state_mean, full.state_mean)
    assert task.K == 1 and type(task.model).__name__ == "BCMLP"
    loss, _ = task.loss(task.batch(np.random.default_rng(0), 4))
    assert np.isfinite(loss.item())


@pytest.mark.parametrize("baselines, names", [("bc,pbc", ["bc", "pbc"]), ("pbc", ["pbc"]), ("none", []),
                                              ("", [])])
def test_baselines_parsed(baselines, names):
    assert rl.config("default", baselines=baselines).baseline_names() == names


def test_unknown_baseline_refused():
    with pytest.raises(ValueError, match="baselines: unknown 'cql'"):
        rl.config("default", baselines="bc,cql").validate()


def test_dataset_path_made_absolute_minari_id_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rl.config("default", dataset="d.h5").dataset == str(tmp_path / "d.h5")
    assert rl.config("default", dataset="minari:a/b-v0").dataset == "minari:a/b-v0"


def _train_tiny(tmp_path, baselines, model="mingru", preset="default", dataset=None):
    pytest.importorskip("mujoco")
    data = dataset or hopper_file(tmp_path / "d.h5", n_eps=10, seed=1)
    cfg = rl.config(preset, model=model, env="hopper", kind="medium", dataset=data, steps=2, eval_every=1,
                    batch_size=2, eval_windows=2, eval_episodes=2, horizon=5, baselines=baselines)
    return rl.train(cfg, tmp_path / "run", progress=False)


def test_summary_reports_each_baseline_beside_the_model(tmp_path):
    s = _train_tiny(tmp_path, "bc,pbc")
    for b in ("bc", "pbc"):
        assert np.isfinite(s[f"{b}_normalized_score"]) and len(s[f"{b}_returns"]) == 2
        assert json.loads((tmp_path / "run" / b / "summary.json").read_text())["config"]["model"] == b
    assert s["pbc_train_episodes"] == 1 and s["bc_train_episodes"] == 9
    assert "BC" in rl.describe(s) and "%BC" in rl.describe(s)


def test_no_baselines_trains_none(tmp_path):
    s = _train_tiny(tmp_path, "none")
    assert not any(k.startswith(("bc_", "pbc_")) for k in s) and not (tmp_path / "run" / "bc").exists()
    assert "BC" not in rl.describe(s)


def test_paper_preset_trains_and_scores_on_a_d4rl_file(tmp_path):
    """The paper preset unchanged but for a tiny budget, through train(): model, BC and %BC scored."""
    s = _train_tiny(tmp_path, "bc,pbc", preset="paper")
    assert s["config"]["d_model"] == 256 and s["config"]["lr"] == 1e-4 and np.isfinite(s["pbc_normalized_score"])
