"""ARS behaviour policies (tasks/rl/ars.py, tasks/rl/collect.py): lockstep rollouts against the
sequential gymnasium oracle, the medium snapshot in absolute terms, the refusal when it is not
reached, medium-replay's exact contents, and the resumable cache."""

from __future__ import annotations

import numpy as np
import pytest
from rl_files import HAVE_GYM, WHY

from mincore.tasks.rl import ars
from mincore.tasks.rl import collect as rl_collect
from mincore.tasks.rl import data as rl_data

pytestmark = pytest.mark.skipif(not HAVE_GYM, reason=f"gymnasium[mujoco] not importable: {WHY}")

TINY = dict(env="hopper", directions=2, top=1, horizon=20, transitions=60, expert_iterations=2)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "cache"))


def _sequential(env, W, mu, sd, seed, noise):
    """The oracle: one gymnasium episode (wrapped env, its own time limit) of one linear policy."""
    rng = np.random.default_rng((int(seed), 1))

    def act(o):
        a = (W * ((o - mu) / sd)[None, :]).sum(-1)
        return np.clip(a + noise * rng.standard_normal(len(a)) if noise else a, -1.0, 1.0)
    return rl_collect.rollout(env, act, seed)[0]


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_lockstep_equals_sequential_single_env_rollouts(noise):
    rng, horizon = np.random.default_rng(0), 40
    W = rng.standard_normal((5, 3, 11)) * np.array([0.0, 0.3, 1.0, 3.0, 3.0])[:, None, None]
    mu, sd, seeds = rng.standard_normal(11) * 0.1, 1 + rng.random(11), [3, 1, 4, 1, 5]
    envs = [rl_collect.make_env("hopper", horizon).unwrapped for _ in range(5)]
    got = ars.lockstep(envs, W, mu, sd, seeds, horizon, noise)
    lens = [len(e["rewards"]) for e in got]
    assert min(lens) < horizon == max(lens)  # some fall over early: the batch shrinks mid-episode
    ref = rl_collect.make_env("hopper", horizon)
    for i, ep in enumerate(got):
        want = _sequential(ref, W[i], mu, sd, seeds[i], noise)
        for k in rl_data.KEYS:
            np.testing.assert_array_equal(ep[k], want[k], err_msg=f"episode {i}, {k}")


def test_two_workers_give_the_same_episodes_as_one():
    rng = np.random.default_rng(1)
    W, seeds = rng.standard_normal((6, 3, 11)), rng.integers(2**31, size=6)
    with ars.Rollouts("hopper", 20, 1) as one, ars.Rollouts("hopper", 20, 2) as two:
        a, b = one(W, np.zeros(11), np.ones(11), seeds, 0.1), two(W, np.zeros(11), np.ones(11), seeds, 0.1)
    for x, y in zip(a, b, strict=True):
        for k in rl_data.KEYS:
            np.testing.assert_array_equal(x[k], y[k])


def _levels(iterations=6):
    """Evaluation levels of a tiny cached run of `iterations` iterations (trained by asking for an
    unreachable level, which must be refused)."""
    cfg = rl_collect.CollectConfig(kind="medium", ars_iterations=iterations, medium_level=1e6, **TINY)
    with pytest.raises(ValueError, match=r"ars_iterations: .*medium level 1000000\.0.*best evaluation was "
                                         r"-?\d+\.\d.*raise --ars-iterations"):
        rl_collect.collect(cfg, progress=False, workers=1)
    return rl_data.normalized_score("hopper", rl_collect.ars_run(cfg).load()["eval_returns"])


def test_refusal_names_the_best_level_reached():
    lv = _levels(4)
    cfg = rl_collect.CollectConfig(kind="medium", ars_iterations=4, medium_level=1e6, **TINY)
    with pytest.raises(ValueError, match=f"best evaluation was {lv.max():.1f} .*iteration {int(np.argmax(lv))}"):
        rl_collect.collect(cfg, progress=False, workers=1)


def test_medium_is_the_first_snapshot_reaching_the_absolute_level(tmp_path, monkeypatch):
    lv = _levels(6)
    level = float(np.sort(lv)[3])  # reached by 3 snapshots; the first of them is the medium one
    first = int(np.flatnonzero(lv >= level)[0])
    cfg = rl_collect.CollectConfig(kind="medium", ars_iterations=6, medium_level=level, **TINY)
    ds = rl_data.load(rl_collect.collect(cfg, tmp_path / "m.h5", progress=False, workers=1))
    assert ds.attrs["medium_iteration"] == first and ds.attrs["medium_level"] == level
    assert ds.attrs["medium_eval_normalized"] == pytest.approx(lv[first])
    # a fresh run stops as soon as it has the medium snapshot, with the same numbers
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "fresh"))
    s = rl_collect.train_ars(cfg, progress=False, workers=1)
    assert len(s["eval_returns"]) == first + 1 and s["medium_iteration"] == first
    np.testing.assert_array_equal(rl_data.normalized_score("hopper", s["eval_returns"]), lv[: first + 1])


def test_medium_replay_holds_exactly_the_rollouts_up_to_the_medium_snapshot(tmp_path):
    lv = _levels(6)
    level = float(np.sort(lv)[2])
    med = int(np.flatnonzero(lv >= level)[0])
    cfg = rl_collect.CollectConfig(kind="medium-replay", ars_iterations=6, medium_level=level, **TINY)
    ds = rl_data.load(rl_collect.collect(cfg, tmp_path / "r.h5", progress=False, workers=1))
    assert ds.attrs["medium_iteration"] == med and len(ds.episodes) == 2 * TINY["directions"] * (med + 1)
    replay = rl_collect.ars_run(cfg).replay(5)  # all 6 iterations' rollouts
    want = rl_collect._concat(replay[: len(ds.episodes)])
    for k in rl_data.KEYS:
        np.testing.assert_array_equal(getattr(ds, k), want[k])
    assert len(replay) == 2 * TINY["directions"] * 6


def test_medium_expert_trains_past_medium_and_records_the_expert_level(tmp_path):
    cfg = rl_collect.CollectConfig(kind="medium-expert", ars_iterations=6, medium_level=-100.0, **TINY)
    ds = rl_data.load(rl_collect.collect(cfg, tmp_path / "e.h5", progress=False, workers=1))
    ev = rl_collect.ars_run(cfg).load()["eval_returns"]
    assert ds.attrs["medium_iteration"] == 0 and len(ev) == 1 + TINY["expert_iterations"]
    assert ds.attrs["best_iteration"] == int(np.argmax(ev))
    assert ds.attrs["expert_level"] == pytest.approx(rl_data.normalized_score("hopper", ev.max()))


def test_an_interrupted_or_extended_run_gives_the_numbers_of_one_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ars, "SAVE_SECONDS", 0.0)  # a chunk after every iteration
    runs = {}
    for name, stops in (("whole", [5]), ("parts", [2, 3, 5])):
        run = ars.ARSRun("hopper", 0, 2, 1, 0.02, 0.03, 20, tmp_path / name)
        with ars.Rollouts("hopper", 20, 1) as roll:
            for n in stops:
                s = run.train(lambda ev: False, n, roll, progress=False)  # noqa: B023
        runs[name] = (s, run.replay(4))
    (a, ra), (b, rb) = runs["whole"], runs["parts"]
    for k in ("snapshots", "eval_returns", "M", "stats_mean", "stats_m2"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["rng"] == b["rng"] and len(ra) == len(rb) == 20
    for x, y in zip(ra, rb, strict=True):
        for k in rl_data.KEYS:
            np.testing.assert_array_equal(x[k], y[k])
    assert len(list((tmp_path / "parts").glob("replay-*.npz"))) > 1


def test_too_many_episodes_for_an_attribute_keep_their_mean_only(tmp_path, monkeypatch):
    """An HDF5 attribute holds at most 64 KiB: per-episode returns of a large medium-replay file would not fit."""
    one = {"observations": np.zeros((1, 11), np.float32), "actions": np.zeros((1, 3), np.float32),
           "rewards": np.ones(1, np.float32), "terminals": np.ones(1, bool), "timeouts": np.zeros(1, bool)}
    monkeypatch.setattr(rl_collect, "run_replay", lambda cfg, upto: [one] * 8000)
    cfg = rl_collect.CollectConfig(kind="medium-replay", ars_iterations=1, medium_level=-100.0, **TINY)
    ds = rl_data.load(rl_collect.collect(cfg, tmp_path / "big.h5", progress=False, workers=1))
    assert len(ds.episodes) == 8000 and "behaviour_returns" not in ds.attrs
    assert ds.attrs["behaviour_mean_return"] == 1.0


def test_one_process_collects_two_environments():
    with ars.Rollouts("hopper", 5, 1) as hop, ars.Rollouts("walker2d", 5, 1) as walk:
        a = hop(np.zeros((1, 3, 11)), np.zeros(11), np.ones(11), [0])[0]
        b = walk(np.zeros((1, 6, 17)), np.zeros(17), np.ones(17), [0])[0]
    assert a["observations"].shape == (5, 11) and b["observations"].shape == (5, 17)
