"""HDF5 checkpoints: bit-identical round trip (parameters, optimizer state, step, RNG stream, config),
atomic replacement, and clear refusals of truncated, corrupted and foreign files."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from mincore.autograd import F, load_checkpoint, optim, save_checkpoint

from mincore.models import SequenceModel

CONFIG = {"task": "copy", "d_model": 8, "lr": 3e-4, "betas": [0.9, 0.99]}


def trained(seed=0, steps=3):
    m = SequenceModel(vocab_size=5, d_model=8, d_output=5, n_layers=2, cell="lru", seed=seed)
    opt = optim.AdamW(m.param_groups(0.05), lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.integers(0, 5, (2, 6))
        opt.zero_grad()
        F.cross_entropy(m(x)[0], x).backward()
        opt.step()
    return m, opt, rng


def test_round_trip_is_bit_identical(tmp_path):
    m, opt, rng = trained()
    path = tmp_path / "ck.h5"
    save_checkpoint(path, m, opt, step=3, rng=rng, config=CONFIG)
    expected_draws = np.random.default_rng(0)
    expected_draws.bit_generator.state = rng.bit_generator.state
    m2, opt2, rng2 = trained(seed=1, steps=1)  # different weights, state and stream
    ck = load_checkpoint(path, m2, opt2, rng2)
    assert ck.step == 3 and ck.config == CONFIG
    for (n, p), (n2, p2) in zip(m.named_parameters(), m2.named_parameters(), strict=True):
        assert n == n2 and p.data.dtype == p2.data.dtype
        np.testing.assert_array_equal(p.data, p2.data)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["t"] == s2["t"] and s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        for k in s1["state"][i]:
            np.testing.assert_array_equal(s1["state"][i][k], s2["state"][i][k])
    assert [g["lr"] for g in s1["groups"]] == [g["lr"] for g in s2["groups"]]
    np.testing.assert_array_equal(rng2.random(5), expected_draws.random(5))  # the stream continues


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    m, opt, rng = trained()
    path = tmp_path / "ck.h5"
    save_checkpoint(path, m, opt, step=1, rng=rng)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, opt, step=2, rng=rng)
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert os.listdir(tmp_path) == ["ck.h5"]


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9, 0.999])
def test_truncated_file_refused(tmp_path, keep):
    m, opt, rng = trained()
    path = tmp_path / "ck.h5"
    save_checkpoint(path, m, opt, rng=rng)
    data = path.read_bytes()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="cut.h5"):
        load_checkpoint(bad, m)


def test_garbage_and_foreign_files_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(ValueError, match="junk.h5.*not a readable HDF5"):
        load_checkpoint(junk)
    foreign = tmp_path / "d4rl.hdf5"
    with h5py.File(foreign, "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match="d4rl.hdf5.*not a mincore checkpoint"):
        load_checkpoint(foreign)


def test_missing_parts_and_shape_mismatch(tmp_path):
    m, _, _ = trained()
    path = tmp_path / "params_only.h5"
    save_checkpoint(path, m)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, optimizer=optim.Adam(m.parameters()))
    with pytest.raises(ValueError, match="no RNG state"):
        load_checkpoint(path, rng=np.random.default_rng())
    other = SequenceModel(vocab_size=5, d_model=4, d_output=5, n_layers=2, cell="lru")
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path, other)
