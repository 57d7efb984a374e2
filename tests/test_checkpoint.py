"""HDF5 checkpoints: bit-identical round trip (parameters, optimizer state, step, RNG stream, config),
atomic replacement, and clear refusals of truncated, corrupted and foreign files."""

from __future__ import annotations

import json
import os
import stat

import h5py
import numpy as np
import pytest

from mincore.autograd import F, load_checkpoint, optim, save_checkpoint
from mincore.autograd.checkpoint import _ATTRS, _digest, remove_stale_temps
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


# --- integrity: every flipped bit or garbage block is refused, or changes nothing ---

@pytest.fixture
def good(tmp_path):
    m, opt, rng = trained()
    path = tmp_path / "good.h5"
    save_checkpoint(path, m, opt, step=3, rng=rng, config=CONFIG)
    return path


def _same_state(a, b) -> bool:
    if (a.step, a.config, a.rng_state) != (b.step, b.config, b.rng_state) or a.params.keys() != b.params.keys():
        return False
    oa, ob = a.optimizer, b.optimizer
    if (oa["t"], oa["groups"], oa["state"].keys()) != (ob["t"], ob["groups"], ob["state"].keys()):
        return False
    pairs = [(x, b.params[n]) for n, x in a.params.items()]
    pairs += [(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i]]
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in pairs)


def _damaged_loads(good, edits) -> int:
    """Apply each edit(bytearray) to the checkpoint `good`; every load must raise a ValueError naming
    the file or return the original state bit for bit. Returns how many were refused."""
    data, ref, bad, refused = good.read_bytes(), load_checkpoint(good), good.with_name("bad.h5"), 0
    for edit in edits:
        b = bytearray(data)
        edit(b)
        bad.write_bytes(b)
        try:
            ck = load_checkpoint(bad)
        except ValueError as e:
            assert "bad.h5" in str(e), str(e)
            refused += 1
        else:
            assert _same_state(ck, ref), f"a damaged checkpoint loaded with other values ({edit.__doc__})"
    return refused


def _flip(off):
    def edit(b):
        b[off] ^= 1 << (off % 8)
    edit.__doc__ = f"bit {off % 8} of byte {off}"
    return edit


def test_single_bit_flips_are_refused_or_harmless(good):
    size = good.stat().st_size
    with h5py.File(good) as f:  # where the bytes of one parameter lie (one chunk, or contiguous)
        d = f["params/head.weight"]
        start, n = (d.id.get_chunk_info(0)[2:] if d.chunks else (d.id.get_offset(), d.id.get_storage_size()))
    data_area = np.linspace(start, start + n - 1, 20).astype(int)
    offsets = sorted({*range(0, 96, 7), *np.linspace(0, size - 1, 70).astype(int), *data_area})
    refused = _damaged_loads(good, [_flip(int(o)) for o in offsets])
    assert refused >= len(data_area)  # flips in the parameter bytes are always refused


def test_garbage_blocks_are_refused(good):
    rs, size = np.random.default_rng(0), good.stat().st_size

    def block(off, junk):
        def edit(b):
            b[off:off + 4096] = junk
        edit.__doc__ = f"4 KiB of garbage at byte {off}"
        return edit
    edits = [block(int(o), rs.integers(0, 256, 4096, dtype=np.uint8).tobytes())
             for o in np.linspace(0, size - 4096, 10)]
    assert _damaged_loads(good, edits) == len(edits)


def _write_v1(path, m, opt, rng, step=3):
    """A checkpoint as version 1 wrote it: no digest, no checksums."""
    sd = opt.state_dict()
    with h5py.File(path, "w") as f:
        f.attrs.update(format="mincore-checkpoint", version=1, step=step, config=json.dumps(CONFIG),
                       rng=json.dumps(rng.bit_generator.state),
                       optimizer=json.dumps({"t": sd["t"], "groups": sd["groups"]}))
        for n, a in m.state_dict().items():
            f[f"params/{n}"] = a
        for i, s in sd["state"].items():
            for k, a in s.items():
                f[f"optim/{i}/{k}"] = a


def test_version_1_checkpoint_loads_with_a_warning(tmp_path):
    m, opt, rng = trained()
    path = tmp_path / "old.h5"
    _write_v1(path, m, opt, rng)
    m2, opt2, rng2 = trained(seed=1, steps=1)
    with pytest.warns(UserWarning, match="old.h5: checkpoint from an older mincore without an integrity digest"):
        ck = load_checkpoint(path, m2, opt2, rng2)
    assert ck.step == 3 and ck.config == CONFIG and opt2.t == opt.t
    for (_, p), (_, p2) in zip(m.named_parameters(), m2.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, p2.data)


def test_new_checkpoints_carry_checksums_and_digest(good):
    with h5py.File(good) as f:
        assert len(f.attrs["sha256"]) == 64
        assert all(f[f"params/{n}"].fletcher32 for n in f["params"])


def _craft(path, attrs=None, datasets=None, drop=()):
    """Change `path` as someone crafting a file would, then recompute its digest, so that only the
    checks of the values themselves can refuse it."""
    with h5py.File(path, "r+") as f:
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for name in [*drop, *(datasets or {})]:
            if name in f:
                del f[name]
        for name, a in (datasets or {}).items():
            f[name] = a
        arrays = {}
        f.visititems(lambda n, o: arrays.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        f.attrs["sha256"] = _digest(arrays, {k: f.attrs[k] for k in _ATTRS})


def test_changed_values_without_a_new_digest_are_corruption(good):
    with h5py.File(good, "r+") as f:
        f["params/head.bias"][0] += 1  # checksums are per chunk: rewritten with the data, the digest is not
    with pytest.raises(ValueError, match="good.h5: checkpoint is corrupted: its contents do not match the "
                                         "sha256 digest"):
        load_checkpoint(good)
    with h5py.File(good, "r+") as f:
        del f.attrs["sha256"]
    with pytest.raises(ValueError, match="good.h5: checkpoint is corrupted: its sha256 digest attribute is "
                                         "missing"):
        load_checkpoint(good)


@pytest.mark.parametrize("attrs, needle", [
    ({"step": -5}, r"step is -5 \(int64\), expected an integer from 0 to 9007199254740992"),
    ({"step": 1e9}, r"step is 1000000000.0 \(float64\), expected an integer"),
    ({"step": 2 ** 60}, "step is 1152921504606846976"),
    ({"version": 0}, "checkpoint version is 0, expected 1 to 2"),
    ({"optimizer": json.dumps({"t": -1, "groups": []})}, "optimizer t is -1"),
    ({"optimizer": json.dumps({"t": 2.5, "groups": []})}, r"optimizer t is 2.5 \(float\)"),
    ({"optimizer": json.dumps({"groups": []})}, "the optimizer attribute lacks t"),
    ({"config": "{not json"}, "the config attribute is not valid JSON"),
    ({"config": "[1, 2]"}, "the config attribute holds list, expected a JSON object"),
])
def test_crafted_attributes_refused(good, attrs, needle):
    _craft(good, attrs=attrs)
    with pytest.raises(ValueError, match=f"good.h5: {needle}"):
        load_checkpoint(good)


def test_complex_parameters_refused_not_cast(good):
    _craft(good, datasets={"params/head.bias": np.ones(5, np.complex64)})
    with pytest.raises(ValueError, match=r"good.h5: dataset /params/head.bias has dtype complex64 \(complex\)"):
        load_checkpoint(good)
    m, _, _ = trained()
    with pytest.raises(ValueError, match="head.bias has dtype complex64, expected real numbers"):
        m.load_state_dict({**m.state_dict(), "head.bias": np.ones(5, np.complex64)})
    with pytest.raises(ValueError, match="save_checkpoint: params/w has dtype complex64, expected real numbers"):
        save_checkpoint(good, {"w": np.ones(2, np.complex64)})


def test_parameters_read_from_a_local_file_are_refused(good, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(5, dtype=np.float32).tobytes())
    with h5py.File(good, "r+") as f:
        del f["params/head.bias"]
        f.create_dataset("params/head.bias", shape=(5,), dtype="f4", external=[(str(secret), 0, 20)])
    with pytest.raises(ValueError, match=r"good.h5: refused: dataset /params/head.bias stores its data in "
                                         r"external file\(s\) .*secret.bin"):
        load_checkpoint(good)
    with h5py.File(good, "r+") as f:
        del f["params/head.bias"]
        f["params/head.bias"] = h5py.ExternalLink(str(secret), "/x")
    with pytest.raises(ValueError, match="good.h5: refused: /params/head.bias is an external link"):
        load_checkpoint(good)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "ck.h5")
    with pytest.raises(ValueError, match="ck.h5: is a FIFO"):
        load_checkpoint(tmp_path / "ck.h5")


def test_missing_and_extra_parameters_are_listed(good):
    _craft(good, datasets={"params/extra.weight": np.zeros(2, np.float32)}, drop=["params/head.bias"])
    m, opt, rng = trained(seed=1)
    before = m.state_dict()
    with pytest.raises(ValueError, match="good.h5: load_state_dict: the state does not match the model's "
                                         "parameters: missing head.bias; unexpected extra.weight"):
        load_checkpoint(good, m)
    assert all(np.array_equal(p.data, before[n]) for n, p in m.named_parameters())  # nothing half-loaded


@pytest.mark.parametrize("datasets, drop, needle", [
    ({"optim/99/m": np.zeros(1, np.float32), "optim/99/v": np.zeros(1, np.float32)}, [],
     "parameter index 99 is out of range; the optimizer has 18 parameters"),
    ({}, ["optim/0/v"], r"parameter 0 has moments \['m'\], expected \['m', 'v'\]"),
    ({"optim/0/m": np.zeros(3, np.float32)}, [], r"m of parameter 0 has shape \(3,\), expected \(5, 8\)"),
    ({"optim/x/m": np.zeros(3, np.float32)}, [], "dataset /optim/x/m is not /optim/INDEX/NAME"),
])
def test_bad_optimizer_state_refused(good, datasets, drop, needle):
    _craft(good, datasets=datasets, drop=drop)
    m, opt, _ = trained(seed=1)
    t, before = opt.t, m.state_dict()
    with pytest.raises(ValueError, match=f"good.h5: .*{needle}"):
        load_checkpoint(good, m, opt)
    assert opt.t == t and all(np.array_equal(p.data, before[n]) for n, p in m.named_parameters())


def test_bad_rng_state_and_max_step_refused(good):
    with pytest.raises(ValueError, match="good.h5: step is 3 .*expected an integer from 0 to 2"):
        load_checkpoint(good, max_step=2)
    assert load_checkpoint(good, max_step=3).step == 3
    _craft(good, attrs={"rng": json.dumps({"bit_generator": "PCG64", "has_uint32": 0})})
    with pytest.raises(ValueError, match="good.h5: rng state is for 'PCG64'.*expected a PCG64 state"):
        load_checkpoint(good, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="good.h5: rng state is for 'PCG64'.*expected a MT19937 state"):
        load_checkpoint(good, rng=np.random.Generator(np.random.MT19937()))
    _craft(good, attrs={"rng": json.dumps({"bit_generator": "PCG64", "state": {"state": 1}})})
    m, opt, rng = trained(seed=1)
    before, draws = m.state_dict(), np.random.default_rng(0)
    draws.bit_generator.state = rng.bit_generator.state
    with pytest.raises(ValueError, match="good.h5: rng state cannot be restored"):
        load_checkpoint(good, m, opt, rng)
    assert all(np.array_equal(p.data, before[n]) for n, p in m.named_parameters())
    assert rng.random() == draws.random()  # the stream is untouched


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ck.h5", {"w": np.zeros(2, np.float32)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ck.h5").stat().st_mode) == 0o666 & ~umask


def test_remove_stale_temps_removes_only_this_writers_temporaries(tmp_path):
    stale = [".ckpt-k2j4_x9a.h5.tmp", ".ckpt-0123456789abcdef.h5.tmp"]  # mkstemp's and this writer's names
    kept = ["checkpoint.h5", ".ckpt-.h5.tmp", "ckpt-0123456789abcdef.h5.tmp", ".ckpt-0123456789.h5",
            "config.tmp", ".download-abc"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temps(tmp_path, min_age=3600) == []  # all fresh
    assert sorted(os.path.basename(p) for p in remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
