"""The training loop under faults: non-finite values, a second run into the same folder, SIGTERM, a
process killed mid-write, a full disk; and the files it writes (strict JSON, one file mode)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mincore.autograd import load_checkpoint, optim
from mincore.tasks import copy as C
from mincore.tasks import loop, rundir


def tiny(**kw):
    """A copy-task config that trains in well under a second a step."""
    base = dict(seq_len=8, n_data=2, d_model=8, n_layers=2, batch_size=2, eval_size=4, eval_batch=2, steps=4,
                eval_every=2, warmup=1)
    return C.config("default", **{**base, **kw})


def train(out, cfg=None, **kw):
    cfg = cfg or tiny()
    return loop.train(C.CopyTask(cfg), cfg, out, task_name="copy", progress=False, **kw)


def strict_events(out) -> list[dict]:
    """metrics.jsonl read by a strict JSON parser (NaN / Infinity literals refused)."""
    def refuse(name):
        raise ValueError(f"metrics.jsonl holds the non-standard JSON constant {name}")
    return [json.loads(line, parse_constant=refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_finite_checkpoint(path, step):
    ck = load_checkpoint(path)
    assert ck.step == step
    assert all(np.isfinite(a).all() for a in ck.params.values())
    assert all(np.isfinite(a).all() for s in ck.optimizer["state"].values() for a in s.values())


def _calls(monkeypatch, cls, name, at, change):
    """Wrap cls.name so that its `at`-th call's result goes through change(self, result)."""
    orig, n = getattr(cls, name), {"calls": 0}

    def wrapped(self, *a, **k):
        out = orig(self, *a, **k)
        n["calls"] += 1
        return change(self, out) if n["calls"] == at else out
    monkeypatch.setattr(cls, name, wrapped)


# ------------------------------------------------------------------------------ non-finite values
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_huge_learning_rate_writes_no_checkpoint_of_a_broken_model(tmp_path):
    """lr 1e38 makes every parameter inf or NaN at step 1: nothing is saved, and the message says so."""
    with pytest.raises(loop.NonFiniteLoss, match=r"non-finite parameters at step 1 .*no checkpoint was written"):
        train(tmp_path, tiny(lr=1e38, eval_every=1, steps=6))
    assert not (tmp_path / "checkpoint.h5").exists() and not (tmp_path / "summary.json").exists()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_a_parameter_made_inf_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def poison(opt, out):
        opt.param_groups[0]["params"][0].data.flat[0] = np.inf
        return out
    _calls(monkeypatch, optim.AdamW, "step", 3, poison)
    task = C.CopyTask(tiny())
    name = next(n for n, p in task.model.named_parameters() if p is task.param_groups()[0]["params"][0])
    ck = tmp_path / "checkpoint.h5"
    with pytest.raises(loop.NonFiniteLoss) as e:
        loop.train(task, tiny(), tmp_path, task_name="copy", progress=False)
    assert f"non-finite parameters at step 3 after the optimizer step ({name})" in str(e.value)
    assert f"last good checkpoint: {ck} (step 2)" in str(e.value)
    assert_finite_checkpoint(ck, 2)


def test_a_non_finite_held_out_loss_is_not_checkpointed(tmp_path, monkeypatch):
    _calls(monkeypatch, C.CopyTask, "evaluate", 2, lambda self, m: {**m, "loss": float("inf")})
    with pytest.raises(loop.NonFiniteLoss, match=r"non-finite held-out loss at step 4; .*\(step 2\)"):
        train(tmp_path)
    assert_finite_checkpoint(tmp_path / "checkpoint.h5", 2)
    bad = strict_events(tmp_path)[-1]
    assert bad["event"] == "non-finite" and bad["split"] == "eval" and bad["loss"] is None


def test_after_resume_the_message_names_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    train(tmp_path, tiny(steps=2))
    _calls(monkeypatch, C.CopyTask, "loss", 1, lambda self, out: (out[0] * float("nan"), out[1]))
    with pytest.raises(loop.NonFiniteLoss) as e:
        train(tmp_path, tiny(steps=4), resume=True)
    assert str(e.value).startswith("non-finite loss at step 3;")
    assert f"last good checkpoint: {tmp_path / 'checkpoint.h5'} (step 2)" in str(e.value)


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path, monkeypatch):
    _calls(monkeypatch, C.CopyTask, "loss", 3, lambda self, out: (out[0] * float("nan"), out[1]))
    with pytest.raises(loop.NonFiniteLoss, match="non-finite loss at step 3"):
        train(tmp_path)
    events = strict_events(tmp_path)
    assert events[-1]["event"] == "non-finite" and events[-1]["loss"] is None and events[-1]["step"] == 3
    rundir.plot_curves(events, tmp_path / "curve.png", "accuracy")  # the repository's reader copes with null


# ------------------------------------------------------------------------------ one run per folder
HOLDER = """
import sys, time
from mincore.tasks.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_locked_folder_is_refused_at_once_and_a_killed_holder_leaves_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunFolderBusy, match=rf"{out} is in use by another training run \(pid "
                                                      rf"{holder.pid}\)"):
            train(out)
        assert not (out / "config.json").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    assert train(out)["status"] == "completed"


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_forced(tmp_path):
    first = train(tmp_path, tiny(steps=2))
    kept = {n: (tmp_path / n).read_bytes() for n in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.h5")}
    with pytest.raises(FileExistsError, match=rf"{tmp_path} holds a run .*resume.*force"):
        train(tmp_path, tiny(steps=3, seed=1))
    assert all((tmp_path / n).read_bytes() == b for n, b in kept.items())
    with pytest.raises(ValueError, match="resume.*force"):
        train(tmp_path, tiny(steps=3), resume=True, force=True)
    second = train(tmp_path, tiny(steps=3, seed=1), force=True)
    assert second["steps"] == 3 and second["config"]["seed"] == 1 and first["config"]["seed"] == 0
    assert [e["step"] for e in strict_events(tmp_path) if e["split"] == "eval"] == [2, 3]  # the old run's gone
    assert load_checkpoint(tmp_path / "checkpoint.h5").step == 3


def test_a_run_inside_the_folder_of_a_run_this_process_trains_is_part_of_it(tmp_path):
    """rl trains its baseline into out/bc: a forced or resumed outer run replaces that inner run."""
    def inner(summary):
        return {"inner_steps": train(tmp_path / "bc", tiny(steps=1))["steps"]}
    for force in (False, True):
        cfg = tiny(steps=1)
        s = loop.train(C.CopyTask(cfg), cfg, tmp_path, task_name="copy", progress=False, force=force, report=inner)
        assert s["inner_steps"] == 1


# ------------------------------------------------------------------------------ signals and kills
SIGTERM_RUN = """
import json, os, signal, sys
from mincore.tasks import copy as C, loop
out, cfg, at, resume = sys.argv[1], C.from_dict(json.loads(sys.argv[2])), int(sys.argv[3]), sys.argv[4] == "1"
orig, calls = C.CopyTask.batch, [0]
def batch(self, rng, size):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGTERM)
    return orig(self, rng, size)
C.CopyTask.batch = batch
s = loop.train(C.CopyTask(cfg), cfg, out, task_name="copy", progress=False, resume=resume)
print(s["status"], s["steps"], s.get("signal"))
"""


def test_sigterm_checkpoints_like_ctrl_c_and_the_run_resumes_bit_identical(tmp_path):
    cfg = json.dumps(dataclasses.asdict(tiny(steps=5, eval_every=4)))
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}

    def sub(out, at, resume=False):
        r = subprocess.run([sys.executable, "-c", SIGTERM_RUN, str(tmp_path / out), cfg, str(at), str(int(resume))],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()[-1].split()  # (after the evaluations' lines)
    assert sub("a", 0) == ["completed", "5", "None"]
    assert sub("b", 3) == ["interrupted", "3", "SIGTERM"]
    assert load_checkpoint(tmp_path / "b" / "checkpoint.h5").step == 3
    last = strict_events(tmp_path / "b")[-1]
    assert (last["event"], last["signal"], last["step"]) == ("interrupted", "SIGTERM", 3)
    assert sub("b", 0, resume=True) == ["completed", "5", "None"]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.h5") for d in "ab")
    assert a.step == b.step == 5 and all(np.array_equal(p, b.params[n]) for n, p in a.params.items())


def test_temporary_files_of_a_killed_writer_are_removed_at_start(tmp_path):
    stale = [".ckpt-0123456789abcdef.h5.tmp", ".summary.json.tmp", ".config.json.tmp", ".metrics.jsonl.tmp"]
    for name in [*stale, "notes.txt"]:
        (tmp_path / name).write_bytes(b"half a file")
    train(tmp_path, tiny(steps=1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in rundir.FILES) == [rundir.LOCK, "notes.txt"]


def test_a_metrics_line_cut_short_by_a_kill_does_not_stop_a_resume(tmp_path):
    train(tmp_path, tiny(steps=2))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')  # the process died inside this write
    assert train(tmp_path, tiny(steps=4), resume=True)["steps"] == 4
    assert [e["step"] for e in strict_events(tmp_path) if e["split"] == "eval"] == [2, 4]


# ------------------------------------------------------------------------------ full disk, file modes
@pytest.mark.parametrize("when", ["checkpoint", "summary"])
def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, when):
    full, fsync = {"now": False}, os.fsync

    def no_space(fd):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)
    monkeypatch.setattr(os, "fsync", no_space)
    if when == "checkpoint":  # the disk fills during the step-4 evaluation
        _calls(monkeypatch, C.CopyTask, "evaluate", 2, lambda self, m: (full.update(now=True), m)[1])
    with pytest.raises(OSError, match="No space left"):
        train(tmp_path, report=lambda s: full.update(now=True) or {})
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "summary.json").exists()
    assert_finite_checkpoint(tmp_path / "checkpoint.h5", 2 if when == "checkpoint" else 4)
    full["now"] = False
    monkeypatch.undo()
    assert train(tmp_path, resume=True)["steps"] == 4  # the folder is not left locked


def test_every_file_of_a_run_gets_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        train(tmp_path, tiny(steps=1))
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert set(modes) == {*rundir.FILES, rundir.LOCK}
    assert set(modes.values()) == {oct(0o640)}, modes


def test_resume_with_a_different_count_of_random_modules_names_the_checkpoint(tmp_path, monkeypatch):
    train(tmp_path, tiny(steps=2))
    orig = loop._rngs
    monkeypatch.setattr(loop, "_rngs", lambda model: orig(model)[:-1])  # a model with one dropout fewer
    with pytest.raises(ValueError, match="checkpoint.h5: the training-loop state holds 2 random states"):
        train(tmp_path, tiny(steps=4), resume=True)
