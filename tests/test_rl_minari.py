"""Minari datasets: a tiny one made with minari's own DataCollector (in a temporary
MINARI_DATASETS_PATH) reads as the D4RL-layout Dataset; D4RL file -> Minari -> reader gives the same
arrays; malformed or missing datasets are refused naming the problem; nothing needs minari unless used."""

from __future__ import annotations

import json
import sys
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mincore.cli.main import main
from mincore.tasks.rl import data as rl_data
from mincore.tasks.rl import minari_io

minari = pytest.importorskip("minari")
gym = pytest.importorskip("gymnasium")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def collected(ds_id, env_id="Pendulum-v1", steps=(5, 3, 4)):
    """Episodes of `steps` lengths (time limit, random actions) through minari.DataCollector."""
    pytest.importorskip("jax")  # DataCollector buffers steps with jax.tree_util
    from mincore.tasks.rl import collect as rl_collect

    name = minari_io.env_name(env_id)  # MuJoCo environments as collection makes them (warnings routed)
    inner = rl_collect.make_env(name, max(steps)) if name else gym.make(env_id, max_episode_steps=max(steps))
    env = minari.DataCollector(inner)
    env.action_space.seed(0)
    for i, n in enumerate(steps):
        env.reset(seed=i)
        for _ in range(n):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env.create_dataset(ds_id, algorithm_name="random")
    return minari.load_dataset(ds_id)


def test_reads_a_datacollector_dataset(store):
    ref = collected("test/pendulum/tiny-v0")
    ds = minari_io.load("minari:test/pendulum/tiny-v0")
    eps = list(ref.iterate_episodes())
    assert [e - s for s, e in ds.episodes] == [len(e) for e in eps]
    np.testing.assert_allclose(ds.observations, np.concatenate([e.observations[:-1] for e in eps]), rtol=1e-6)
    np.testing.assert_allclose(ds.actions, np.concatenate([e.actions for e in eps]), rtol=1e-6)
    np.testing.assert_allclose(ds.rewards, np.concatenate([e.rewards for e in eps]), rtol=1e-6)
    assert not ds.terminals.any() and ds.timeouts.sum() == len(eps)  # the time limit ends each episode
    assert ds.attrs["env_id"] == "Pendulum-v1" and "env" not in ds.attrs  # no D4RL reference returns


def test_env_from_env_spec(store):
    collected("test/halfcheetah/tiny-v0", env_id="HalfCheetah-v5", steps=(3, 2))
    ds = minari_io.load("minari:test/halfcheetah/tiny-v0")
    assert ds.attrs["env"] == "halfcheetah" and ds.obs_dim == 17 and ds.act_dim == 6
    assert [minari_io.env_name(i) for i in ("Hopper-v4", "mujoco/Walker2d-v5", "Ant-v5", None)] == \
        ["hopper", "walker2d", None, None]


def _d4rl_file(path, n=23, next_obs=False, env="hopper"):
    rng = np.random.default_rng(0)
    d = {"observations": rng.standard_normal((n, 11)).astype(np.float32),
         "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
         "rewards": rng.random(n).astype(np.float32), "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    d["terminals"][6] = True   # episodes 0..6 (terminal), 7..16 (timeout), 17..22 (no flag: truncated)
    d["timeouts"][16] = True
    rl_data.save(path, d, {"env": env, "kind": "medium", "collect_config": json.dumps({"horizon": 10})})
    if next_obs:
        with h5py.File(path, "r+") as f:
            f["next_observations"] = d["observations"] + 100
    return d


@pytest.mark.parametrize("next_obs", [False, True])
def test_round_trip_d4rl_minari_reader(store, tmp_path, next_obs):
    d = _d4rl_file(tmp_path / "d.h5", next_obs=next_obs)
    assert minari_io.write(tmp_path / "d.h5", "mincore/hopper/medium-v0") == "mincore/hopper/medium-v0"
    back = minari_io.load("minari:mincore/hopper/medium-v0")
    for k in ("observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(back, k), d[k])
    want_timeouts = d["timeouts"].copy()
    want_timeouts[-1] = True  # the trailing run is written as a truncated episode
    np.testing.assert_array_equal(back.timeouts, want_timeouts)
    assert back.attrs["env"] == "hopper" and back.episodes == [(0, 7), (7, 17), (17, 23)]
    m = minari.load_dataset("mincore/hopper/medium-v0")  # the standard tooling reads it
    assert m.total_episodes == 3 and m.env_spec.id == "Hopper-v5" and m.env_spec.max_episode_steps == 10
    first = next(m.iterate_episodes())
    want_final = d["observations"][6] + (100 if next_obs else 0)
    np.testing.assert_array_equal(first.observations[-1], want_final)
    lo, hi = rl_data.REF_MIN_MAX["hopper"]
    np.testing.assert_allclose(minari.get_normalized_score(m, np.array([lo, hi])), [0, 1], atol=1e-6)  # minari: 0..1
    # the same file again: kept; another file under the same ID: refused
    assert minari_io.write(tmp_path / "d.h5", "mincore/hopper/medium-v0") == "mincore/hopper/medium-v0"
    _d4rl_file(tmp_path / "e.h5", env="walker2d")
    with pytest.raises(ValueError, match="already exists .* `minari delete mincore/hopper/medium-v0`"):
        minari_io.write(tmp_path / "e.h5", "mincore/hopper/medium-v0")


def test_missing_dataset_says_how_to_download(store):
    with pytest.raises(FileNotFoundError, match=r"minari:mujoco/hopper/medium-v0: no such dataset in the local "
                                                r"Minari storage.*minari download mujoco/hopper/medium-v0"):
        minari_io.load("minari:mujoco/hopper/medium-v0")
    assert not (store / "mujoco").exists()  # nothing fetched, nothing created


@pytest.mark.parametrize("spec, needle", [("minari:", "names no Minari dataset"),
                                          ("minari:../../etc", "is malformed"),
                                          ("minari:/abs/x-v0", "is malformed")])
def test_bad_ids_refused(store, spec, needle):
    with pytest.raises(ValueError, match=needle):
        minari_io.load(spec)


def _edit_episode(store, ds_id, key, value):
    with h5py.File(store / ds_id / "data" / "main_data.hdf5", "r+") as f:
        g = f["episode_1"]
        if key in g:
            del g[key]
        if value is not None:
            g[key] = value


@pytest.mark.parametrize("key, value, needles", [
    ("actions", np.zeros((2, 1), np.float32), ["episode 1: actions has shape (2, 1), expected (3, 1)"]),
    ("observations", np.zeros((3, 3)), ["episode 1: observations has shape (3, 3), expected (4, 3)",
                                        "after the last step"]),
    ("rewards", np.array([0.0, np.nan, 0.0]), ["rewards has 1 non-finite"]),
    ("terminations", np.array([False, True, False]), ["episode 1: the episode ends", "at step 1 of 3"]),
    ("truncations", None, ["episode cannot be read", "truncations"]),
])
def test_malformed_minari_refused(store, key, value, needles):
    collected("test/pendulum/bad-v0")
    _edit_episode(store, "test/pendulum/bad-v0", key, value)
    with pytest.raises(ValueError) as e:
        minari_io.load("minari:test/pendulum/bad-v0")
    assert "minari:test/pendulum/bad-v0" in str(e.value)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_non_box_space_refused(store):
    from minari.data_collector import EpisodeBuffer

    buf = EpisodeBuffer(id=0, observations=np.arange(4), actions=np.zeros(3, np.int64), rewards=np.zeros(3),
                        terminations=np.array([0, 0, 1], bool), truncations=np.zeros(3, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/discrete-v0", [buf], observation_space=gym.spaces.Discrete(5),
                                           action_space=gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"minari:test/discrete-v0: the observation space is Discrete\(5\), "
                                         r"expected a 1-D Box"):
        minari_io.load("minari:test/discrete-v0")


def test_external_link_in_main_data_refused(store, tmp_path):
    collected("test/pendulum/link-v0")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with h5py.File(store / "test/pendulum/link-v0/data/main_data.hdf5", "r+") as f:
        f["episode_0/extra"] = h5py.ExternalLink(str(other), "/x")
    with pytest.raises(ValueError, match="external link"):
        minari_io.load("minari:test/pendulum/link-v0")


def test_without_minari_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(RuntimeError, match=r"pip install 'mincore\[rl\]'"):
        minari_io.load("minari:x/y-v0")
    _d4rl_file(tmp_path / "d.h5")
    assert len(rl_data.load(tmp_path / "d.h5")) == 23  # D4RL files need no minari


def test_import_mincore_does_not_import_minari():
    import subprocess

    code = "import sys, mincore, mincore.tasks.rl, mincore.cli.main; print('minari' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_rl_info_reads_minari(store):
    collected("test/halfcheetah/info-v0", env_id="HalfCheetah-v5", steps=(3, 2))
    r = CliRunner().invoke(main, ["rl", "info", "minari:test/halfcheetah/info-v0"])
    assert r.exit_code == 0, r.output
    assert "5 transitions, 2 episodes" in r.output and "D4RL-normalised" in r.output
    r = CliRunner().invoke(main, ["rl", "info", "minari:test/none-v0"])
    assert r.exit_code != 0 and "minari download test/none-v0" in r.output


def test_paper_preset_trains_and_scores_on_a_minari_dataset(store, tmp_path):
    """The paper preset unchanged but for a tiny budget, on minari:ID: model, BC and %BC scored."""
    pytest.importorskip("mujoco")
    from mincore.tasks import rl

    d = _d4rl_file(tmp_path / "d.h5")
    minari_io.write(tmp_path / "d.h5", "mincore/hopper/medium-v0")
    cfg = rl.config("paper", env="hopper", kind="medium", dataset="minari:mincore/hopper/medium-v0", steps=2,
                    eval_every=1, batch_size=2, eval_windows=2, eval_episodes=2, horizon=5)
    s = rl.train(cfg, tmp_path / "run", progress=False)
    assert s["dataset"] == "minari:mincore/hopper/medium-v0" and s["dataset_transitions"] == len(d["rewards"])
    assert s["config"]["d_model"] == 256 and np.isfinite([s["normalized_score"], s["bc_normalized_score"],
                                                          s["pbc_normalized_score"]]).all()


def test_train_command_takes_a_minari_id(store, monkeypatch):
    from mincore.tasks import rl

    seen = {}

    def train(cfg, out, **kw):
        seen["cfg"] = cfg
        return {"status": "completed", "steps": 0, "loss": 0.0, "wall_seconds": 0.0}
    monkeypatch.setattr(rl, "train", train)
    monkeypatch.setattr(rl, "describe", lambda s: "described")
    r = CliRunner().invoke(main, ["train", "--task", "rl", "--env", "hopper", "--dataset", "minari:a/hopper-v0",
                                  "--baselines", "pbc", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert seen["cfg"].dataset == "minari:a/hopper-v0" and seen["cfg"].baseline_names() == ["pbc"]
    r = CliRunner().invoke(main, ["train", "--task", "rl", "--baselines", "cql", "--quiet"])
    assert r.exit_code != 0 and "baselines: unknown 'cql'" in r.output


def test_collect_format_minari_writes_both(store, tmp_path, monkeypatch):
    from mincore.tasks.rl import collect as rl_collect

    d = _d4rl_file(tmp_path / "d.h5")
    monkeypatch.setattr(rl_collect, "collect", lambda cfg, out=None, progress=True: tmp_path / "d.h5")
    r = CliRunner().invoke(main, ["rl", "collect", "--env", "hopper", "--kind", "medium", "--format", "minari",
                                  "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "minari:mincore/hopper/medium-v0" in r.output and "23 transitions" in r.output
    assert minari.load_dataset("mincore/hopper/medium-v0").total_steps == len(d["rewards"])
    r = CliRunner().invoke(main, ["rl", "collect", "--env", "hopper", "--kind", "medium", "--format", "minari",
                                  "--dataset-id", "me/hop-v1", "--quiet"])
    assert r.exit_code == 0 and minari.load_dataset("me/hop-v1").total_episodes == 3
    r = CliRunner().invoke(main, ["rl", "collect", "--env", "hopper", "--kind", "medium", "--dataset-id", "x-v0"])
    assert r.exit_code != 0 and "add --format minari" in r.output


def test_rl_info_refusal_is_one_line(store):
    collected("test/pendulum/cli-v0")
    _edit_episode(store, "test/pendulum/cli-v0", "actions", np.zeros((2, 1), np.float32))
    r = CliRunner().invoke(main, ["rl", "info", "minari:test/pendulum/cli-v0"])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    assert "minari:test/pendulum/cli-v0: episode 1: actions has shape (2, 1)" in lines[0]


def test_the_dataset_option_takes_a_file_or_a_minari_id(tmp_path):
    """--dataset is a file option with the minari: scheme: a missing file is refused by the command
    line, a minari:ID passes through to the reader (and is not made into a path)."""
    from mincore.tasks import data_option
    from mincore.tasks import rl as rl_task

    opt = data_option(rl_task)
    assert opt.field == "dataset" and opt.names_file("x.h5") and not opt.names_file("minari:a/b-v0")
    r = CliRunner().invoke(main, ["train", "--task", "rl", "--dataset", str(tmp_path / "none.h5"),
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "does not exist" in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--task", "rl", "--dataset", "minari:nobody/nothing-v0",
                                  "--out", str(tmp_path / "run")], env={"MINARI_DATASETS_PATH": str(tmp_path)})
    assert r.exit_code == 1 and "minari download nobody/nothing-v0" in r.output, r.output
