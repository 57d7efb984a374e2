"""Data-parallel training under `mpiexec -n 2`: the same parameters as one process, files written
once, refusals printed once, a killed or hung rank stopping the job in bounded time, and resuming.
Skipped where mpiexec or mpi4py is missing (pip install -e '.[mpi]' brings both)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mincore.autograd import load_checkpoint
from mincore.autograd.distributed import SIZE_VARIABLES
from mincore.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
MINCORE = [str(BIN / "mincore")] if (BIN / "mincore").exists() else [sys.executable, "-c",
                                                                     "from mincore.cli.main import main; main()"]
pytestmark = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                                reason="needs mpiexec and mpi4py: pip install -e '.[mpi]'")
COPY = ["train", "--task", "copy", "--batch-size", "8", "--quiet"]


def env(**more) -> dict:
    """This process's environment without a launcher's rank variables (pytest may itself run under one)."""
    return {**{k: v for k, v in os.environ.items() if k not in SIZE_VARIABLES}, **more}


def mpiexec(*args, n: int = 2, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True, timeout=timeout,
                          env=env(**kw), cwd=ROOT)


def one_process(*args):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def params(out) -> dict:
    return load_checkpoint(Path(out) / "checkpoint.h5").params


def assert_close(a: dict, b: dict, rtol: float):
    assert a.keys() == b.keys()
    for k in a:
        scale = float(np.abs(a[k]).max()) or 1.0
        err = float(np.abs(a[k].astype(np.float64) - b[k]).max()) / scale
        assert err <= rtol, (k, err)


def events(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_the_collectives_pass_on_every_rank():
    r = mpiexec(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_distributed_ranks.py")
    assert r.returncode == 0, r.stdout + r.stderr
    passed = re.findall(r"(\d+) passed", r.stdout)
    assert len(passed) == 2 and int(passed[0]) >= 10, r.stdout  # each rank's summary line
    assert "skipped" not in r.stdout and "failed" not in r.stdout, r.stdout


def test_two_ranks_train_as_one_process_and_write_each_file_once(tmp_path):
    args = [*COPY, "--steps", "6", "--eval-every", "3"]
    one_process(*args, "--out", str(tmp_path / "one"))
    r = mpiexec(*MINCORE, *args, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_close(params(tmp_path / "one"), params(tmp_path / "two"), rtol=1e-4)  # float32, summed in another order
    assert r.stdout.count("copy mingru: held-out") == 1 and r.stdout.count("step 3:") == 1, r.stdout  # rank 0
    one, two = events(tmp_path / "one"), events(tmp_path / "two")
    assert [(e["step"], e["split"]) for e in two] == [(e["step"], e["split"]) for e in one]  # each line once
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert (b["allreduce_seconds"] >= 0 and "allreduce_seconds" not in a) if a["split"] == "train" else True
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert summary["ranks"] == config["ranks"] == 2 and config["allreduce"] == "mpi"
    assert summary["accuracy"] == pytest.approx(json.loads((tmp_path / "one" / "summary.json").read_text())["accuracy"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


FLOAT64 = """
import sys
import numpy as np
from mincore.tasks import copy as C, loop
cfg = C.config("default", steps=4, eval_every=2, batch_size=8, eval_size=64, eval_batch=32)
task = C.CopyTask(cfg)
for p in task.model.parameters():
    p.data = p.data.astype(np.float64)
loop.train(task, cfg, sys.argv[1], task_name="copy", progress=False)
"""


def test_float64_two_ranks_match_one_process_to_rounding(tmp_path):
    one = subprocess.run([sys.executable, "-c", FLOAT64, str(tmp_path / "one")], capture_output=True, text=True,
                         env=env(), timeout=300)
    assert one.returncode == 0, one.stderr
    r = mpiexec(sys.executable, "-c", FLOAT64, str(tmp_path / "two"))
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = params(tmp_path / "one"), params(tmp_path / "two")
    assert all(v.dtype == np.float64 for v in b.values())
    assert_close(a, b, rtol=1e-12)


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "7"], "batch_size 7 cannot be split evenly over 2 ranks"),
    (["--allreduce", "nccl"], "allreduce nccl sums CuPy arrays on GPUs, and this run's arrays are NumPy")])
def test_a_refusal_is_printed_once_and_every_rank_exits(tmp_path, args, message):
    r = mpiexec(*MINCORE, *COPY, "--steps", "2", *args, "--out", str(tmp_path / "run"), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert (r.stdout + r.stderr).count(message) == 1, r.stdout + r.stderr
    assert "Abort" not in r.stderr, r.stderr  # a clean exit of each rank, not the job's abort


def rank_pid(tag: str, rank: int, deadline: float) -> int:
    """The pid of rank `rank` of the job whose environment holds MINCORE_TEST_JOB=tag."""
    want = {f"MINCORE_TEST_JOB={tag}".encode(), f"PMI_RANK={rank}".encode()}
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and want <= set((d / "environ").read_bytes().split(b"\0")):
                    return int(d.name)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} of job {tag} found")


def start_and_signal_rank_1(out, sig=signal.SIGSTOP, *more) -> tuple[subprocess.Popen, int]:
    """A 2-rank copy run, rank 1 sent `sig` (SIGSTOP: stopped) once the first checkpoint is on disk."""
    tag = uuid.uuid4().hex
    job = subprocess.Popen([MPIEXEC, "-n", "2", *MINCORE, *COPY, "--steps", "40", "--eval-every", "5",
                            "--out", str(out), *more], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env(MINCORE_TEST_JOB=tag), cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.h5").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.01)
    pid = rank_pid(tag, 1, deadline)
    os.kill(pid, sig)
    return job, pid


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    r = mpiexec(*MINCORE, *COPY, "--steps", "40", "--eval-every", "5", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return params(out)


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' pids in /proc")


@needs_proc
def test_a_killed_rank_stops_the_job_and_the_run_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    job, pid = start_and_signal_rank_1(out)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - t0 < 60
    assert "Killed" in stdout + stderr, stdout + stderr  # the launcher names the signal that ended rank 1
    step = load_checkpoint(out / "checkpoint.h5").step  # the last checkpoint is whole
    assert step % 5 == 0 and 5 <= step < 40
    r = mpiexec(*MINCORE, "train", "--task", "copy", "--quiet", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming {out} at step {step} of 40" in r.stderr
    for k, v in params(out).items():  # the same ranks, the same states: the same run, bit for bit
        np.testing.assert_array_equal(v, uninterrupted[k], err_msg=k)


@needs_proc
def test_a_hung_rank_stops_the_job_with_a_message_after_the_timeout(tmp_path):
    out = tmp_path / "run"
    job, _ = start_and_signal_rank_1(out, signal.SIGSTOP, "--rank-timeout", "3")
    t0 = time.monotonic()
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - t0 < 60
    step = load_checkpoint(out / "checkpoint.h5").step
    said = r"Error: rank 0 of 2: RankTimeout: rank 0 of 2: the \w.* waited 3 s for the other ranks"
    assert re.search(said, stderr), stderr
    assert f"last good checkpoint: {out / 'checkpoint.h5'} (step {step}); stopping every rank" in stderr, stderr


@needs_proc
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    out = tmp_path / "run"
    job, _ = start_and_signal_rank_1(out, signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stdout + stderr
    assert stderr.count("interrupted at step") == 1, stderr
    assert f"mpiexec -n 2 mincore train --task copy --out {out} --resume" in stderr
    stops = [e for e in events(out) if e.get("event") == "interrupted"]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGTERM"
    assert load_checkpoint(out / "checkpoint.h5").step == stops[0]["step"]  # a checkpoint of that step


def test_shakespeare_on_two_ranks_as_on_one(tmp_path):
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "the", "king", "shall", "love", "night", "day", "sweet", "lord"]
    text = " ".join(rng.choice(words, 20_000)) + "\n"
    (tmp_path / "t.txt").write_text(text)
    args = ["train", "--task", "shakespeare", "--data", str(tmp_path / "t.txt"), "--steps", "2", "--eval-every",
            "2", "--batch-size", "4", "--quiet"]
    one_process(*args, "--out", str(tmp_path / "one"), "--threads", "1")
    r = mpiexec(*MINCORE, *args, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_close(params(tmp_path / "one"), params(tmp_path / "two"), rtol=1e-4)
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # test windows shared out over the ranks
    assert b["stateful_loss"] == pytest.approx(a["stateful_loss"], rel=1e-5)  # rank 0's, broadcast
