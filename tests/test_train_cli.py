"""`mincore train` / `mincore eval` through click's CliRunner: files, eval = summary, resume, errors."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from mincore.autograd import Tensor, load_checkpoint
from mincore.cli.main import main
from mincore.tasks import copy as C
from mincore.tasks.loop import FILES

FAST = ["--task", "copy", "--quiet", "--eval-every", "2"]


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def small_eval(monkeypatch):
    """A smaller held-out set keeps each run to a second or two (the CLI has no option for it)."""
    monkeypatch.setitem(C.PRESETS, "default", C.config("default", eval_size=128))


@pytest.mark.parametrize("cmd", [["train"], ["eval"]])
def test_help_has_an_example(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0, r.output
    assert "Example" in r.output and f"mincore {cmd[0]}" in r.output


def test_train_help_takes_each_tasks_facts_from_its_module(monkeypatch):
    from mincore.cli.options import models_help, threads_help

    assert "mingru or minlstm" in models_help()  # every task's, then each task's extras:
    assert "(copy: also lru)" in models_help() and "(rl: also bc and pbc)" in models_help()
    assert "1 for copy" in threads_help() and "every free core for shakespeare" in threads_help()
    monkeypatch.setattr(C, "THREADS", 3)
    monkeypatch.setattr(C, "MODELS", ("mingru", "minlstm"))
    assert "(copy: also" not in models_help()
    assert "3 for copy;" in threads_help() and "1 for rl" in threads_help()
    r = run("train", "--help")
    assert "--env" in r.output and "rl: MuJoCo environment" in r.output and "--data" in r.output


def test_train_writes_every_file_and_eval_reproduces_summary(tmp_path, small_eval):
    out = tmp_path / "run"
    r = run("train", *FAST, "--steps", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "held-out accuracy" in r.output
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy", "loss", "steps", "wall_seconds", "parameters", "engine", "machine"):
        assert key in summary, key
    assert summary["steps"] == 2
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e["split"] for e in events} == {"train", "eval"}
    assert all({"step", "loss", "lr", "wall"} <= set(e) for e in events)
    r = run("eval", "--checkpoint", str(out / "checkpoint.h5"), "--json")
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output)
    assert metrics["accuracy"] == summary["accuracy"] and metrics["loss"] == summary["loss"]
    assert "accuracy" in run("eval", "--checkpoint", str(out / "checkpoint.h5")).output


def _interrupt_at(monkeypatch, call):
    """Send SIGINT (Ctrl-C) from inside the `call`-th training batch draw."""
    orig, n = C.CopyTask.batch, {"calls": 0}

    def batch(self, rng, size):
        n["calls"] += 1
        if n["calls"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, rng, size)
    monkeypatch.setattr(C.CopyTask, "batch", batch)


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, small_eval, monkeypatch):
    args = [*FAST, "--steps", "5", "--seed", "7"]
    assert run("train", *args, "--out", str(tmp_path / "a")).exit_code == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 3)
        r = run("train", *args, "--out", str(tmp_path / "b"))
    assert r.exit_code == 130 and "--resume" in r.output
    assert load_checkpoint(tmp_path / "b" / "checkpoint.h5").step == 3
    r = run("train", "--task", "copy", "--quiet", "--out", str(tmp_path / "b"), "--resume")
    assert r.exit_code == 0, r.output
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.h5") for d in "ab")
    assert a.step == b.step == 5
    for name, p in a.params.items():
        assert np.array_equal(p, b.params[name]), name
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert sa["accuracy"] == sb["accuracy"] and sa["loss"] == sb["loss"]
    steps = [e["step"] for e in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
             if e["split"] == "eval"]
    assert steps == [2, 4, 5]  # no duplicated or lost events across the interruption


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_eval, monkeypatch):
    orig, n = C.CopyTask.loss, {"calls": 0}

    def loss(self, batch):
        n["calls"] += 1
        value, metrics = orig(self, batch)
        return (value * Tensor(np.float32("nan")) if n["calls"] == 3 else value), metrics
    monkeypatch.setattr(C.CopyTask, "loss", loss)
    r = run("train", *FAST, "--steps", "6", "--out", str(tmp_path))
    assert r.exit_code == 1
    assert "non-finite loss at step 3" in r.output and "Traceback" not in r.output
    ck = load_checkpoint(tmp_path / "checkpoint.h5")
    assert ck.step == 2 and all(np.isfinite(p).all() for p in ck.params.values())
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["train", "--task", "chess"], "'--task'"),
    (["train", "--model", "gru", "--steps", "1"], "--model"),
    (["train", "--preset", "huge"], "--preset"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--batch-size", "x"], "--batch-size"),
    (["train", "--engine", "fortran"], "--engine"),
    (["train", "--bogus"], "--bogus"),
    (["train", "--task", "copy", "--data", __file__], "--data is an option of --task shakespeare, not copy"),
    (["eval"], "--checkpoint"),
    (["eval", "--checkpoint", "/no/such/file.h5"], "does not exist"),
])
def test_bad_arguments_give_one_line_errors(args, needle):
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit)
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and needle in errors[0], r.output
    assert "Traceback" not in r.output


def test_eval_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not hdf5")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(bad)])
    assert r.exit_code == 1 and "not a readable HDF5 checkpoint" in r.output
    assert isinstance(r.exception, SystemExit)


def test_resume_needs_a_checkpoint_and_its_own_settings(tmp_path):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--resume"])
    assert r.exit_code == 1 and "no checkpoint" in r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--resume", "--seed", "9"])
    assert r.exit_code == 2 and "drop --seed" in r.output


def _events(run_dir, split):
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["split"] == split]


def test_resume_with_more_steps_extends_a_finished_run_on_the_longer_schedule(tmp_path, small_eval):
    """A finished 4-step run resumed with --steps 8 trains steps 5-8 at the learning rates of an
    8-step run (warmup + cosine over the new total), keeps its first events, and ends at step 8."""
    cfg = C.config("default", steps=4, warmup=1, eval_every=2, log_every=2)
    long = C.config("default", steps=8, warmup=1, eval_every=2, log_every=2)
    C.train(cfg, tmp_path / "short", progress=False)
    C.train(long, tmp_path / "long", progress=False)
    first = _events(tmp_path / "short", "train")
    r = CliRunner().invoke(main, ["train", "--task", "copy", "--quiet", "--out", str(tmp_path / "short"),
                                  "--resume", "--steps", "8"])
    assert r.exit_code == 0, r.output
    assert "extended from 4 to 8 steps" in r.output
    ext, ref = _events(tmp_path / "short", "train"), _events(tmp_path / "long", "train")
    assert ext[:2] == first  # the finished run's own events are kept as they were
    assert [e["step"] for e in ext] == [2, 4, 6, 8]
    assert [e["lr"] for e in ext[2:]] == [e["lr"] for e in ref[2:]]  # the 8-step schedule from step 4 on
    assert ext[1]["lr"] != ref[1]["lr"]  # (the 4-step schedule had ended there: the test can tell them apart)
    assert load_checkpoint(tmp_path / "short" / "checkpoint.h5").step == 8
    summary = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["config"]["steps"] == 8 and summary["status"] == "completed"


def test_resume_refuses_fewer_steps_than_the_run_has_taken(tmp_path, small_eval):
    assert run("train", *FAST, "--steps", "4", "--out", str(tmp_path)).exit_code == 0
    r = CliRunner().invoke(main, ["train", "--task", "copy", "--out", str(tmp_path), "--resume", "--steps", "3"])
    assert r.exit_code == 2 and "--steps" in r.output and "at step 4" in r.output and "at least 4" in r.output
    assert load_checkpoint(tmp_path / "checkpoint.h5").step == 4


@pytest.mark.parametrize("cpus, load, expected", [(2, 0.2, 2), (2, 0.9, 2), (2, 1.1, 1), (2, 7.0, 1),
                                                  (8, 2.6, 6), (1, 3.0, 1), (4, 0.0, 4)])
def test_free_cpus_leaves_the_cores_the_load_average_keeps_busy(cpus, load, expected):
    from mincore.backend import free_cpus

    assert free_cpus(cpus, load) == expected


def test_a_task_wanting_every_core_takes_the_free_ones_and_says_so(monkeypatch):
    import os

    import mincore.backend as B
    from mincore.cli.options import default_threads

    monkeypatch.setattr(B, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 1.0, 1.0))
    n, note = default_threads(None)
    assert n == 1 and "load average 1.3 on 2 CPUs" in note and "--threads 2" in note
    assert default_threads(3) == (3, None)  # a task's own count is kept whatever the load
    assert default_threads(None, ranks_here=2) == (1, None)  # ranks on one machine share its cores
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 1.0, 1.0))
    assert default_threads(None) == (2, None)


def test_threads_default_to_the_tasks_choice(tmp_path, small_eval, monkeypatch):
    import mincore.cli.train as T

    seen, orig = [], T.cpu_threads
    monkeypatch.setattr(T, "cpu_threads", lambda n: (seen.append(n), orig(n))[1])
    assert run("train", *FAST, "--steps", "1", "--out", str(tmp_path / "a")).exit_code == 0
    assert run("train", *FAST, "--steps", "1", "--threads", "3", "--out", str(tmp_path / "b")).exit_code == 0
    assert seen == [C.THREADS, 3] and C.THREADS == 1


_FAULTS = """
import resource, sys, numpy as np
from mincore.backend import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "tuned" else None)
def step():  # a training step's worth of activation-sized arrays, allocated, written, freed
    arrs = [np.ones(2 << 20, np.float32) for _ in range(6)]
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def test_keep_freed_memory_stops_page_faults_on_recycled_arrays():
    """After keep_freed_memory() (glibc), repeated 8 MiB allocations reuse freed memory: no new page
    faults (untuned glibc: ~30,000 for these 10 'steps', measured). Fresh processes: it is process-wide."""
    import platform
    import subprocess
    import sys

    out = {m: subprocess.run([sys.executable, "-c", _FAULTS, m], capture_output=True, text=True, check=True)
           .stdout.split() for m in ("default", "tuned")}
    if platform.libc_ver()[0] != "glibc":
        assert out["tuned"][0] == "False"
        return
    assert out["tuned"][0] == "True"
    assert int(out["tuned"][1]) < 100 < int(out["default"][1]), out


def test_train_into_a_folder_holding_a_run_fails_and_keeps_the_run(tmp_path, small_eval):
    assert run("train", *FAST, "--steps", "1", "--out", str(tmp_path)).exit_code == 0
    kept = {n: (tmp_path / n).read_bytes() for n in ("summary.json", "metrics.jsonl", "checkpoint.h5")}
    r = CliRunner().invoke(main, ["train", *FAST, "--steps", "2", "--out", str(tmp_path)])
    assert r.exit_code == 1 and f"{tmp_path} holds a run" in r.output and "Traceback" not in r.output
    assert all((tmp_path / n).read_bytes() == b for n, b in kept.items())


def test_train_into_a_folder_another_run_trains_in_fails_naming_its_pid(tmp_path, small_eval):
    import subprocess
    import sys

    hold = "import sys, time\nfrom mincore.tasks.rundir import RunDir\nwith RunDir(sys.argv[1]).locked():\n" \
           "    print('locked', flush=True)\n    time.sleep(120)\n"
    other = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(main, ["train", *FAST, "--steps", "1", "--out", str(tmp_path)])
    finally:
        other.kill()
        other.wait()
    assert r.exit_code == 1 and f"in use by another training run (pid {other.pid})" in r.output
    assert not (tmp_path / "config.json").exists()


def test_the_paper_preset_on_a_cpu_says_up_front_that_it_is_a_gpu_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "train", lambda *a, **k: {"status": "interrupted", "steps": 0})  # no training
    r = CliRunner().invoke(main, ["train", "--task", "copy", "--preset", "paper", "--out", str(tmp_path / "p")])
    assert r.exit_code == 130
    assert "the paper preset is the published GPU setting" in r.output and "--engine cupy" in r.output
    r = CliRunner().invoke(main, ["train", "--task", "copy", "--out", str(tmp_path / "d")])
    assert "GPU setting" not in r.output
