"""Hostile and malformed D4RL-layout files: the RL loader refuses each one with a ValueError naming
the file and the problem, before any byte outside the file is read or any declared size allocated,
and `mincore rl info FILE` turns it into one line and a non-zero exit. In-memory arrays (masked,
complex, non-finite, flags other than 0 / 1) are refused the same way."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mincore.cli.main import main
from mincore.tasks.rl import collect as rl_collect
from mincore.tasks.rl import data as rl_data

N = 10
SECRET = np.arange(100, 100 + N, dtype=np.float32)  # a "local file" the crafted files try to read
HUGE = 2**40  # elements declared in a file of a few kilobytes


def arrays(n=N):
    rng = np.random.default_rng(0)
    t = np.zeros(n, bool)
    t[4] = True
    return {"observations": rng.standard_normal((n, 3)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            "rewards": np.ones(n, np.float32), "terminals": t, "timeouts": np.zeros(n, bool)}


def write(path, replace=None, **change):
    """A valid file whose datasets in `change` are replaced by arrays (None: left out) and whose
    builders in `replace` (name -> f(file, name)) create the others' hostile stand-ins."""
    d = {**arrays(), **change}
    with h5py.File(path, "w") as f:
        for k, v in d.items():
            if k in (replace or {}):
                replace[k](f, k)
            elif v is not None:
                f[k] = v
    return path


# ------------------------------------------------------------------------------ builders
def external_link(tmp):
    other = tmp / "other.h5"
    with h5py.File(other, "w") as f:
        f["rewards"] = SECRET
    return lambda f, k: f.__setitem__(k, h5py.ExternalLink(str(other), "/rewards"))


def external_storage(tmp):
    raw = tmp / "secret.bin"
    raw.write_bytes(SECRET.tobytes())
    return lambda f, k: f.create_dataset(k, shape=(N,), dtype="f4", external=[(str(raw), 0, SECRET.nbytes)])


def virtual(tmp):
    src = tmp / "src.h5"
    with h5py.File(src, "w") as f:
        f["x"] = SECRET

    def build(f, k):
        layout = h5py.VirtualLayout(shape=(N,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(src), "x", shape=(N,))
        f.create_virtual_dataset(k, layout)
    return build


def dangling(tmp):
    return lambda f, k: f.__setitem__(k, h5py.SoftLink("/nowhere"))


def group(tmp):
    return lambda f, k: f.create_group(k)


def never_written(n, cols=None):
    """Every key declared with n rows (obs 2 GiB at n = 2**29) and never written: no bytes stored."""
    def build(f, k):
        shape = (n, cols) if cols is not None and k in ("observations", "actions") else (n,)
        f.create_dataset(k, shape=shape, dtype="f4")
    return build


def huge_chunked(f, k):
    """HUGE rows declared, one chunk written: the file stores a few kilobytes."""
    shape = (HUGE, 1) if k in ("observations", "actions") else (HUGE,)
    chunks = (1024, 1) if len(shape) == 2 else (1024,)
    d = f.create_dataset(k, shape=shape, dtype="f4", chunks=chunks)
    d[:1024] = 1.0


def wide_rewards(f, k):
    """rewards declared (N, 2**28) float32 (10 GiB), never written: the shape alone is wrong."""
    f.create_dataset(k, shape=(N, 2**28), dtype="f4")


ALL = rl_data.KEYS


def _flags(row, value):
    a = np.zeros(N)
    a[row] = value
    return a


def _inf_observation():
    obs = arrays()["observations"].copy()
    obs[4, 2] = np.inf
    return obs


def nothing(tmp):
    return {}


# name -> (hostile stand-ins: tmp -> {key: builder}, arrays replacing valid ones: () -> dict, needles)
CASES = {
    "external link": (lambda t: {"rewards": external_link(t)}, dict, ["/rewards is an external link"]),
    "external storage": (lambda t: {"rewards": external_storage(t)}, dict, ["external file", "secret.bin"]),
    "virtual dataset": (lambda t: {"rewards": virtual(t)}, dict, ["/rewards is a virtual dataset"]),
    "dangling soft link": (lambda t: {"rewards": dangling(t)}, dict, ["/rewards is a soft link to /nowhere"]),
    "group for a dataset": (lambda t: {"rewards": group(t)}, dict, ["/rewards is a Group", "expected a dataset"]),
    "never written 2 GiB": (lambda t: dict.fromkeys(ALL, never_written(2**29, 1)), dict, ["never written"]),
    "2^40 elements declared": (lambda t: dict.fromkeys(ALL, huge_chunked), dict, [f"declares {HUGE * 4} bytes"]),
    "wrong shape, 10 GiB declared": (lambda t: {"rewards": wide_rewards}, dict,
                                     ["rewards: expected shape (10,) or (10, 1), got (10, 268435456)"]),
    "observations 3-D": (nothing, lambda: {"observations": np.zeros((N, 3, 1), np.float32)}, ["must be 2-D"]),
    "no observation columns": (nothing, lambda: {"observations": np.zeros((N, 0), np.float32)},
                               ["observations has 0 columns"]),
    "complex rewards": (nothing, lambda: {"rewards": np.ones(N, np.complex64)},
                        ["rewards has dtype complex64", "float"]),
    "string actions": (nothing, lambda: {"actions": np.full((N, 2), b"1.0")}, ["actions has dtype |S3", "float"]),
    "NaN terminals": (nothing, lambda: {"terminals": _flags(3, np.nan)}, ["terminals", "only 0 or 1", "row 3", "nan"]),
    "half a timeout": (nothing, lambda: {"timeouts": _flags(6, 0.5)}, ["timeouts", "only 0 or 1", "row 6", "0.5"]),
    "flag 2": (nothing, lambda: {"terminals": np.arange(N) % 3}, ["terminals", "only 0 or 1", "row 2", ": 2"]),
    "inf observation": (nothing, lambda: {"observations": _inf_observation()},
                        ["observations", "non-finite", "row 4, column 2"]),
    "rewards beyond float32": (nothing, lambda: {"rewards": np.full(N, 1e300)}, ["rewards", "non-finite", "row 0"]),
}
NAMES = list(CASES)


def _case(tmp_path, name):
    replace, change, needles = CASES[name]
    return write(tmp_path / "d.h5", replace(tmp_path), **change()), needles


@pytest.mark.parametrize("name", NAMES)
def test_loader_refuses_with_file_and_problem(tmp_path, name):
    path, needles = _case(tmp_path, name)
    with pytest.raises(ValueError) as e:
        rl_data.load(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert str(SECRET[0]) not in msg  # nothing of the local file came in


@pytest.mark.parametrize("name", NAMES)
def test_rl_info_is_one_line(tmp_path, name):
    path, needles = _case(tmp_path, name)
    one_line_error(CliRunner().invoke(main, ["rl", "info", str(path)]), str(path), needles[0])


def one_line_error(r, *needles):
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_plain_reader_would_have_read_the_local_file(tmp_path):
    """What the refused files do to a reader without the checks: the local file comes in as rewards."""
    path = write(tmp_path / "d.h5", {"rewards": external_storage(tmp_path)})
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["rewards"][()], SECRET)


FIFO_SCRIPT = """
import json, sys
from click.testing import CliRunner
from mincore.cli.main import main
from mincore.tasks.rl import collect, data

def outcome(fn):
    try:
        fn()
        return {"error": None}
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}

path = sys.argv[1]
print(json.dumps(outcome(lambda: data.load(path))), flush=True)
r = CliRunner().invoke(main, ["rl", "info", path])
print(json.dumps({"exit_code": r.exit_code, "exception": type(r.exception).__name__, "stderr": r.stderr,
                  "output": r.output}), flush=True)
print(json.dumps(outcome(lambda: collect.collect(collect.CollectConfig(kind="random"), path))), flush=True)
"""


def test_fifo_refused_without_blocking(tmp_path):
    """A FIFO without a writer blocks whoever opens it for reading; in a subprocess with a timeout, a
    regression fails this test instead of hanging the suite (a thread blocked in h5py would hold
    h5py's global lock)."""
    import json
    import subprocess
    import sys

    fifo = tmp_path / "d.h5"
    os.mkfifo(fifo)
    try:
        p = subprocess.run([sys.executable, "-c", FIFO_SCRIPT, str(fifo)], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"blocked on the FIFO: {e.stdout!r}")
    assert p.returncode == 0, p.stderr
    load, cli, collect = (json.loads(line) for line in p.stdout.splitlines())
    for e in (load, collect):
        assert e["error"] in ("ValueError", "OSError") and "FIFO" in e["message"] and str(fifo) in e["message"], e
    assert cli["exit_code"] != 0 and cli["exception"] == "SystemExit" and "Traceback" not in cli["output"], cli
    lines = [line for line in cli["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "FIFO" in lines[0] and str(fifo) in lines[0], cli


def test_collect_reuse_check_refuses_a_hostile_out(tmp_path):
    path = write(tmp_path / "d.h5", {"rewards": external_link(tmp_path)})
    with pytest.raises(ValueError, match="external link"):
        rl_collect.collect(rl_collect.CollectConfig(kind="random"), path)


def test_env_attribute_must_be_text(tmp_path):
    path = write(tmp_path / "d.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["env"] = np.arange(3)
    with pytest.raises(ValueError, match=f"{path}: attribute env .*expected the environment's name"):
        rl_data.load(path)


@pytest.mark.parametrize("flags", [np.array([0, 1] * 5, np.int8), np.array([0.0, 1.0] * 5),
                                   np.array([False, True] * 5)])
def test_exact_0_1_flags_accepted(tmp_path, flags):
    ds = rl_data.load(write(tmp_path / "d.h5", terminals=flags))
    assert ds.terminals.dtype == bool and ds.terminals.tolist() == [False, True] * 5
    assert len(ds.episodes) == 5


@pytest.mark.parametrize("key", rl_data.KEYS)
def test_masked_arrays_refused(key):
    a = arrays()
    a[key] = np.ma.masked_array(a[key], mask=np.zeros(a[key].shape, bool))
    for make in (lambda: rl_data.from_arrays(a, source="mine"),
                 lambda: rl_data.Dataset(**a, source="mine")):
        with pytest.raises(ValueError, match=f"mine: {key} is a masked array"):
            make()


def test_masked_arrays_refused_by_save(tmp_path):
    a = arrays()
    a["rewards"] = np.ma.masked_invalid(np.where(np.arange(N) == 2, np.nan, 1.0))
    with pytest.raises(ValueError, match="rewards is a masked array"):
        rl_data.save(tmp_path / "d.h5", a)
    assert not (tmp_path / "d.h5").exists()


def test_in_memory_arrays_checked_like_files():
    a = arrays()
    a["terminals"] = np.where(np.arange(N) == 3, np.nan, 0.0)
    with pytest.raises(ValueError, match="arrays: terminals must hold only 0 or 1.*row 3"):
        rl_data.from_arrays(a)
    a = arrays()
    a["rewards"] = a["rewards"] + 1j
    with pytest.raises(ValueError, match="rewards has dtype complex64"):
        rl_data.Dataset(**a)


def test_split_episodes_refuses_flags_other_than_0_1():
    with pytest.raises(ValueError, match="split_episodes: terminals must hold only 0 or 1.*row 1: nan"):
        rl_data.split_episodes(np.array([0.0, np.nan, 0.0]), np.zeros(3))
    assert rl_data.split_episodes(np.array([0, 1, 0]), np.zeros(3)) == [(0, 2), (2, 3)]


def test_rl_info_of_an_environment_without_reference_returns(tmp_path):
    """An `env` attribute naming no D4RL environment: the summary prints, without a normalised score."""
    path = tmp_path / "pen.h5"
    rl_data.save(path, arrays(), {"env": "pen"})
    r = CliRunner().invoke(main, ["rl", "info", str(path)])
    assert r.exit_code == 0, r.output
    assert "transitions" in r.output and "normalised" not in r.output
