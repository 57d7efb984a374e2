"""Collection of tiny D4RL-kind datasets with gymnasium MuJoCo (skips where it is not installed),
the evaluation context (window vs carried state) and a `mincore train --task rl` smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from rl_files import HAVE_GYM, WHY

from mincore.cli.main import main
from mincore.tasks import rl
from mincore.tasks.rl import collect as rl_collect
from mincore.tasks.rl import data as rl_data
from mincore.tasks.rl import eval as rl_eval
from mincore.tasks.rl.model import DecisionRNN

needs_gym = pytest.mark.skipif(not HAVE_GYM, reason=f"gymnasium[mujoco] not importable: {WHY}")

TINY = dict(env="hopper", ars_iterations=2, directions=2, top=1, horizon=20, transitions=60, medium_level=-100.0,
            expert_iterations=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "cache"))


@needs_gym
@pytest.mark.parametrize("kind", rl_collect.KINDS)
def test_collect_is_reproducible_and_reloads(tmp_path, kind):
    cfg = rl_collect.CollectConfig(kind=kind, **TINY)
    a = rl_data.load(rl_collect.collect(cfg, tmp_path / "a.h5", progress=False))
    b = rl_data.load(rl_collect.collect(cfg, tmp_path / "b.h5", progress=False))
    for k in rl_data.KEYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.obs_dim == 11 and a.act_dim == 3 and a.attrs["env_id"] == "Hopper-v5" and a.attrs["kind"] == kind
    assert a.lengths.max() <= 20 and len(a.attrs["behaviour_returns"]) == len(a.episodes)
    np.testing.assert_allclose(a.attrs["behaviour_returns"], a.returns, rtol=1e-4)
    if kind != "medium-replay":
        assert len(a) >= 60 * (2 if kind == "medium-expert" else 1)


@needs_gym
def test_collect_reuses_a_file_of_the_same_settings(tmp_path):
    cfg = rl_collect.CollectConfig(kind="random", **TINY)
    p = rl_collect.collect(cfg, tmp_path / "r.h5", progress=False)
    t = p.stat().st_mtime_ns
    assert rl_collect.collect(cfg, p, progress=False).stat().st_mtime_ns == t


def test_window_context_rereads_the_last_K_steps():
    """The documented choice: 'window' re-reads steps t-K+1..t from a zero state; it equals 'carry'
    while t < K and the parallel forward on the last K steps afterwards."""
    K, rng = 3, np.random.default_rng(0)
    model = DecisionRNN(4, 2, d_model=16, max_timestep=50, seed=3)
    model.eval()
    pol = {m: rl_eval.DecisionPolicy(model, np.zeros(4, np.float32), np.ones(4, np.float32), K=K,
                                     target_return=500.0, mode=m) for m in ("window", "carry")}
    for p in pol.values():
        p.reset(2)
    obs = rng.standard_normal((6, 2, 4)).astype(np.float32)
    acts, rews = {m: [] for m in pol}, rng.standard_normal((6, 2))
    for t in range(6):
        for m, p in pol.items():
            acts[m].append(p.act(obs[t]))
            p.observe(acts["window"][t], rews[t])  # both follow the same trajectory
        if t < K:
            np.testing.assert_allclose(acts["carry"][t], acts["window"][t], rtol=1e-4, atol=1e-5)
    rtg = (500.0 - np.concatenate([[0], np.cumsum(rews[:, 0])]))[:6] / 1000.0
    lo = 6 - K
    want = model(rtg[lo:, None, None].transpose(1, 0, 2).astype(np.float32), obs[lo:, :1].transpose(1, 0, 2),
                 np.stack(acts["window"][lo:], 1)[:1], np.arange(lo, 6)[None]).data[0, -1]
    np.testing.assert_allclose(acts["window"][-1][0], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(acts["carry"][-1], acts["window"][-1], atol=1e-4)


def test_score_mean_and_standard_error():
    s = rl_eval.score("hopper", [0.0, 2.0])
    assert s["mean_return"] == 1.0 and s["return_stderr"] == pytest.approx(1.0) and s["episodes"] == 2


@needs_gym
def test_train_rl_smoke_through_the_cli(tmp_path, monkeypatch):
    tiny = rl.config("default", d_model=16, K=4, steps=2, bc_steps=2, batch_size=4, eval_every=2,
                     eval_windows=8, eval_episodes=2, horizon=20, ars_iterations=2, transitions=60)
    monkeypatch.setitem(rl.PRESETS, "default", tiny)
    monkeypatch.setitem(rl_collect.MEDIUM_LEVEL, "hopper", -100.0)  # two tiny ARS iterations reach it
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--task", "rl", "--env", "hopper", "--kind", "medium", "--quiet",
                                  "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    for k in ("normalized_score", "mean_return", "bc_normalized_score", "dataset_mean_return",
              "dataset_best_return", "episodes", "wall_seconds", "dataset"):
        assert k in s, k
    assert s["episodes"] == 2 and (out / "bc" / "summary.json").exists() and "normalised score" in r.output
    r = CliRunner().invoke(main, ["train", "--task", "copy", "--env", "hopper"])
    assert r.exit_code != 0 and "--task rl" in r.output


def test_collect_command_passes_the_collection_settings_through(tmp_path, monkeypatch):
    """mincore rl collect's options land in the CollectConfig that collect() receives."""
    seen = {}

    def fake_collect(cfg, out, progress=True):
        seen["cfg"], seen["out"] = cfg, out
        raise RuntimeError("stop here")
    monkeypatch.setattr(rl_collect, "collect", fake_collect)
    r = CliRunner().invoke(main, ["rl", "collect", "--env", "hopper", "--kind", "medium-expert", "--ars-iterations",
                                  "7", "--medium-level", "12.5", "--expert-iterations", "3", "--action-noise", "0",
                                  "--out", str(tmp_path / "x.h5")])
    assert "stop here" in r.output + str(r.exception), r.output
    c = seen["cfg"]
    assert (c.env, c.kind, c.ars_iterations, c.medium_level, c.expert_iterations, c.action_noise) == \
        ("hopper", "medium-expert", 7, 12.5, 3, 0.0)
    r = CliRunner().invoke(main, ["rl", "collect", "--env", "hopper", "--kind", "medium", "--action-noise", "-1"])
    assert r.exit_code == 2 and "--action-noise" in r.output
