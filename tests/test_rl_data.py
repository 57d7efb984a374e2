"""D4RL-layout reading: episode splits, returns-to-go, windows and masks, malformed files refused."""

import h5py
import numpy as np
import pytest

from mincore.tasks.rl import data as rl_data


def _write(path, n=10, obs=3, act=2, column=False, **change):
    rng = np.random.default_rng(0)
    d = {"observations": rng.standard_normal((n, obs)).astype(np.float32),
         "actions": rng.uniform(-1, 1, (n, act)).astype(np.float32),
         "rewards": np.arange(n, dtype=np.float32),
         "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}
    d["terminals"][3] = True   # episode 0: steps 0..3 (ended by the environment)
    d["timeouts"][6] = True    # episode 1: steps 4..6 (time limit); episode 2: 7..9 (no flag: truncated)
    if column:
        for k in ("rewards", "terminals", "timeouts"):
            d[k] = d[k][:, None]
    d.update(change)
    with h5py.File(path, "w") as f:
        for k, v in d.items():
            if v is not None:
                f.create_dataset(k, data=v)
        f.attrs["env"] = "hopper"
    return d


@pytest.mark.parametrize("column", [False, True])
def test_episodes_and_returns_to_go(tmp_path, column):
    _write(tmp_path / "d.h5", column=column)
    ds = rl_data.load(tmp_path / "d.h5")
    assert ds.episodes == [(0, 4), (4, 7), (7, 10)]
    np.testing.assert_allclose(ds.rtg[:4], [6, 6, 5, 3])
    np.testing.assert_allclose(ds.rtg[4:7], [15, 11, 6])
    np.testing.assert_allclose(ds.returns, [6, 15, 24])
    assert ds.attrs["env"] == "hopper"
    assert ds.summary()["best_return"] == 24
    np.testing.assert_allclose(ds.state_mean, ds.observations.mean(0), rtol=1e-6)


def test_windows_pad_right_and_mask(tmp_path):
    _write(tmp_path / "d.h5")
    ds = rl_data.load(tmp_path / "d.h5")
    w = ds.gather(np.array([5]), np.array([7]), 4, reward_scale=10.0, normalize=False)
    np.testing.assert_array_equal(w["mask"], [[1, 1, 0, 0]])
    np.testing.assert_array_equal(w["timesteps"], [[1, 2, 0, 0]])
    np.testing.assert_allclose(w["rtg"][0, :, 0], [1.1, 0.6, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(w["states"][0, :2], ds.observations[5:7])
    assert not w["states"][0, 2:].any() and not w["actions"][0, 2:].any()
    b = ds.windows(np.random.default_rng(1), 64, 3)
    assert b["states"].shape == (64, 3, 3) and b["actions"].shape == (64, 3, 2) and b["rtg"].shape == (64, 3, 1)
    assert b["mask"][:, 0].all()  # every window starts on a real step


def test_save_roundtrip(tmp_path):
    d = _write(tmp_path / "d.h5")
    rl_data.save(tmp_path / "e.h5", d, {"how": "test"})
    ds = rl_data.load(tmp_path / "e.h5")
    np.testing.assert_array_equal(ds.observations, d["observations"])
    assert ds.attrs["how"] == "test"


@pytest.mark.parametrize("change, message", [
    ({"timeouts": None}, "missing D4RL key(s) timeouts"),
    ({"rewards": np.zeros(9, np.float32)}, "rewards has 9 rows but observations has 10"),
    ({"actions": np.full((10, 2), np.nan, np.float32)}, "actions has 20 non-finite"),
    ({"rewards": np.zeros((10, 2), np.float32)}, "rewards: expected shape (10,) or (10, 1)"),
])
def test_malformed_refused(tmp_path, change, message):
    _write(tmp_path / "d.h5", **change)
    with pytest.raises(ValueError) as e:
        rl_data.load(tmp_path / "d.h5")
    assert message in str(e.value)


def test_not_hdf5(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        rl_data.load(tmp_path / "x.h5")


def test_normalized_score():
    lo, hi = rl_data.REF_MIN_MAX["hopper"]
    np.testing.assert_allclose(rl_data.normalized_score("hopper", [lo, hi]), [0, 100])


def test_best_episodes_fill_the_share_of_steps_best_first(tmp_path):
    """%BC's data (Decision Transformer's selection): whole episodes by return, best first, while their
    steps stay within the share of all steps; at least the best episode."""
    _write(tmp_path / "d.h5")  # episodes of 4, 3, 3 steps with returns 6, 15, 24
    ds = rl_data.load(tmp_path / "d.h5")
    assert ds.best_episodes(0.1).tolist() == [2]      # 1 step allowed: the best episode alone
    assert ds.best_episodes(0.6).tolist() == [1, 2]   # 6 steps: returns 24 and 15
    assert ds.best_episodes(0.65).tolist() == [1, 2]  # the next (4 steps) would exceed 6
    assert ds.best_episodes(1.0).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="fraction"):
        ds.best_episodes(0.0)


def test_read_dispatches_files_and_minari_ids(tmp_path, monkeypatch):
    from mincore.tasks.rl import minari_io

    _write(tmp_path / "d.h5")
    assert len(rl_data.read(str(tmp_path / "d.h5"))) == 10
    monkeypatch.setattr(minari_io, "load", lambda spec: ("minari", spec))
    assert rl_data.read("minari:a/b-v0") == ("minari", "minari:a/b-v0")
