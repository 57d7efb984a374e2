"""`mincore rl table`: the aggregation (over seeds, or over episodes with one seed), the Markdown /
JSON / PNG files, cached runs read instead of run again; tiny runs on a synthetic hopper file with
10-step rollouts in the real simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
from click.testing import CliRunner
from rl_files import hopper_file

from mincore.cli.main import main
from mincore.tasks.rl import table as rl_table


def _summary(score, stderr=1.0, ret=100.0):
    return {"normalized_score": score, "normalized_stderr": stderr, "mean_return": ret, "episodes": 5,
            "wall_seconds": 60.0, "dataset": "d.h5", "dataset_best_return": 3234.3,
            "dataset_normalized_score": 12.0, "dataset_episodes": 7, "dataset_transitions": 700}


def test_aggregate_over_seeds_and_over_episodes(tmp_path):
    tc = rl_table.TableConfig(envs=("hopper",), kinds=("medium",), seeds=3, models=("mingru",), baselines=("bc",))
    res = rl_table.aggregate(tc, {("hopper", "medium"): {"mingru": [_summary(s) for s in (10.0, 20.0, 30.0)],
                                                         "bc": [_summary(s) for s in (5.0, 5.0, 8.0)]}})
    cell = res["rows"][0]["cells"]["mingru"]
    assert cell["normalized_mean"] == 20.0 and cell["normalized_stderr"] == pytest.approx(10 / np.sqrt(3))
    assert cell["over"] == "seeds" and res["over"] == "seeds" and cell["wall_seconds"] == 180.0
    assert res["rows"][0]["dataset_normalized_best"] == pytest.approx(100.0, abs=1e-3)
    md = rl_table.markdown(res)
    assert "| hopper medium | 20.0 ± 5.8 | 6.0 ± 1.0 | 12.0 / 100.0 |" in md
    assert "standard error over 3 training seeds" in md and "Decision-minGRU" in md and "| BC |" in md
    one = rl_table.aggregate(tc, {("hopper", "medium"): {"mingru": [_summary(42.0, stderr=2.5)]}})
    assert one["rows"][0]["cells"]["mingru"]["normalized_stderr"] == 2.5 and one["rows"][0]["cells"]["mingru"][
        "over"] == "episodes"
    rl_table.plot(res, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind, name", [("medium", "hopper medium"), ("hopper-medium-v2", "hopper-medium-v2"),
                                        ("mujoco/hopper/medium-v0", "mujoco/hopper/medium-v0"),
                                        ("my-data", "hopper my-data")])
def test_row_named_once(kind, name):
    """A given file's stem or Minari id that already names the environment is not prefixed again."""
    tc = rl_table.TableConfig(envs=("hopper",), kinds=("medium",), seeds=1, models=("mingru",), baselines=())
    md = rl_table.markdown(rl_table.aggregate(tc, {("hopper", kind): {"mingru": [_summary(1.0)]}}))
    assert f"| {name} | 1.0 ± 1.0 |" in md


@pytest.mark.parametrize("change, needle", [(dict(envs=("pong",)), "envs"), (dict(kinds=("expert",)), "kinds"),
                                            (dict(models=("mingru", "mingru")), "distinct"),
                                            (dict(seeds=0), "seeds"),
                                            (dict(dataset="d.h5", envs=("hopper", "walker2d")), "one environment"),
                                            (dict(collect_seed=-1), "collect_seed"),
                                            (dict(envs=("hopper", "walker2d"), medium_level=50.0), "medium_level"),
                                            (dict(envs=("hopper",), dataset="d.h5", medium_level=50.0), "dataset"),
                                            (dict(envs=("hopper",), medium_level=float("nan")), "finite")])
def test_bad_settings_refused(change, needle):
    with pytest.raises(ValueError, match=needle):
        rl_table.TableConfig(**change).validate()


def test_table_command_runs_then_reads_cached_runs(tmp_path):
    pytest.importorskip("mujoco")
    data, out = hopper_file(tmp_path / "hopper-tiny.h5"), tmp_path / "table"
    args = ["rl", "table", "--envs", "hopper", "--dataset", data, "--seeds", "1", "--models", "mingru",
            "--steps", "2", "--episodes", "2", "--horizon", "10", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "[1/3] hopper hopper-tiny Decision-minGRU seed 0: training" in r.stderr
    assert "| hopper-tiny |" in r.stdout and "evaluation episodes" in r.stdout
    res = json.loads((out / "table.json").read_text())
    assert res["models"] == ["mingru", "bc", "pbc"] and res["over"] == "episodes"
    assert set(res["rows"][0]["cells"]) == {"mingru", "bc", "pbc"}
    assert (out / "table.png").exists() and (out / "table.md").read_text().startswith("D4RL-normalised score")
    run = json.loads((out / "hopper-hopper-tiny" / "pbc-seed0" / "summary.json").read_text())
    assert run["config"]["model"] == "pbc" and run["config"]["steps"] == 2 and run["config"]["baselines"] == "none"
    r = CliRunner().invoke(main, args)  # the same settings again: every run read, none trained
    assert r.exit_code == 0 and r.stderr.count(": read from") == 3 and "training" not in r.stderr, r.stderr
    args[args.index("--steps") + 1] = "3"
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and r.stderr.count("training") == 3, r.stderr  # other settings: run again


def test_an_interrupted_run_stops_the_table_and_the_same_command_continues_it(tmp_path, monkeypatch):
    """SIGTERM in a run: a one-line message and exit 130, no traceback; the rerun resumes that run from
    its checkpoint (not from step 0) and ends as an uninterrupted table does."""
    pytest.importorskip("mujoco")
    data, out = hopper_file(tmp_path / "hopper-tiny.h5"), tmp_path / "table"
    args = ["rl", "table", "--envs", "hopper", "--dataset", data, "--seeds", "1", "--models", "mingru",
            "--baselines", "bc", "--steps", "4", "--episodes", "2", "--horizon", "10", "--quiet"]
    orig, calls = rl_table.rl_task.RLTask.batch, [0]

    def batch(self, rng, size):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, rng, size)
    monkeypatch.setattr(rl_table.rl_task.RLTask, "batch", batch)
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 130, r.output
    assert "interrupted at step 2 (SIGTERM)" in r.stderr and "the same command continues" in r.stderr
    assert "Traceback" not in r.output and not (out / "table.md").exists()
    monkeypatch.setattr(rl_table.rl_task.RLTask, "batch", orig)
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Decision-minGRU seed 0: continuing the interrupted run in" in r.stderr and "BC seed 0: training" in r.stderr
    events = [json.loads(line) for line in (out / "hopper-hopper-tiny" / "mingru-seed0" / "metrics.jsonl").open()]
    assert [e["step"] for e in events if e.get("event") == "interrupted"] == [2]  # kept: continued, not replaced
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "straight")])  # never interrupted
    assert r.exit_code == 0, (r.output, r.exc_info and traceback.format_exception(*r.exc_info))
    a, b = (json.loads((d / "hopper-hopper-tiny" / "mingru-seed0" / "summary.json").read_text())
            for d in (out, tmp_path / "straight"))
    assert a["loss"] == b["loss"] and a["returns"] == b["returns"]


def test_collected_rows_over_seeds(tmp_path, monkeypatch):
    """Without --dataset every env x kind is collected once (seed 0) and shared by all seeds."""
    pytest.importorskip("mujoco")
    calls = []
    data = hopper_file(tmp_path / "d.h5")

    def collect(cfg, out=None, progress=True):
        calls.append((cfg.env, cfg.kind, cfg.seed, cfg.horizon))
        return data
    monkeypatch.setattr(rl_table.rl_collect, "collect", collect)
    tc = rl_table.TableConfig(envs=("hopper",), kinds=("medium", "medium-replay"), seeds=2, models=("minlstm",),
                              baselines=(), steps=1, episodes=2, horizon=10, out=str(tmp_path / "t"))
    lines = []
    res = rl_table.run(tc, progress=False, say=lines.append)
    assert calls == [("hopper", "medium", 0, 10), ("hopper", "medium-replay", 0, 10)]
    assert [r["kind"] for r in res["rows"]] == ["medium", "medium-replay"] and res["over"] == "seeds"
    assert len(res["rows"][1]["cells"]["minlstm"]["per_seed"]) == 2
    assert (tmp_path / "t" / "hopper-medium-replay" / "minlstm-seed1" / "summary.json").exists()
    assert sum("training into" in line for line in lines) == 4


def test_another_collection_seed_or_medium_level_names_the_row(tmp_path, monkeypatch):
    """--collect-seed / --medium-level reach the collection, and the row and its folder say so."""
    pytest.importorskip("mujoco")
    calls, data = [], hopper_file(tmp_path / "d.h5")

    def collect(cfg, out=None, progress=True):
        calls.append((cfg.kind, cfg.seed, cfg.level))
        return data
    monkeypatch.setattr(rl_table.rl_collect, "collect", collect)
    tc = rl_table.TableConfig(envs=("hopper",), kinds=("medium",), seeds=1, models=("mingru",), baselines=(),
                              steps=1, episodes=2, horizon=10, out=str(tmp_path / "t"), collect_seed=1,
                              medium_level=30.0)
    res = rl_table.run(tc, progress=False, say=lambda line: None)
    assert calls == [("medium", 1, 30.0)]
    assert res["rows"][0]["kind"] == "medium (collection seed 1, medium level 30)"
    assert "| hopper medium (collection seed 1, medium level 30) |" in rl_table.markdown(res)
    folder = tmp_path / "t" / "hopper-medium_collection_seed_1_medium_level_30"
    assert (folder / "mingru-seed0" / "summary.json").exists()


def _tiny_table(tmp_path, out, **kw):
    data = hopper_file(tmp_path / "hopper-tiny.h5")
    return rl_table.TableConfig(envs=("hopper",), dataset=data, seeds=2, models=("mingru",), baselines=("bc",),
                                episodes=2, horizon=10, out=str(tmp_path / out), **kw)


def test_runs_in_worker_processes_give_the_numbers_of_one_process(tmp_path):
    """--jobs 2: the same summaries as one run at a time (each run depends only on its settings)."""
    pytest.importorskip("mujoco")
    lines = []
    a = rl_table.run(_tiny_table(tmp_path, "one", steps=3), progress=False, say=lambda line: None)
    b = rl_table.run(_tiny_table(tmp_path, "two", steps=3), progress=False, say=lines.append, jobs=2)
    assert "4 runs, 2 at a time (one thread each); a line as each one ends" in lines
    assert sum("normalised score" in line for line in lines) == 4
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        for m in ("mingru", "bc"):
            assert ra["cells"][m]["per_seed"] == rb["cells"][m]["per_seed"]
    for run in ("mingru-seed1", "bc-seed0"):
        sa, sb = (json.loads((tmp_path / d / "hopper-hopper-tiny" / run / "summary.json").read_text())
                  for d in ("one", "two"))
        assert sa["loss"] == sb["loss"] and sa["returns"] == sb["returns"]


TABLE_JOBS = """
import sys
from mincore.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_every_worker_at_a_checkpoint(tmp_path):
    """SIGTERM to the table's process with --jobs 2: both running runs checkpoint, exit 130, one line
    naming them, and the rerun finds them interrupted (to be continued), not replaced."""
    pytest.importorskip("mujoco")
    data, out = hopper_file(tmp_path / "hopper-tiny.h5"), tmp_path / "table"
    args = ["rl", "table", "--envs", "hopper", "--dataset", data, "--seeds", "2", "--models", "mingru",
            "--baselines", "none", "--steps", "100000", "--episodes", "2", "--horizon", "10", "--quiet",
            "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", TABLE_JOBS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    runs = [out / "hopper-hopper-tiny" / f"mingru-seed{k}" for k in (0, 1)]
    deadline = time.monotonic() + 240
    while not all((r / "metrics.jsonl").exists() and '"train"' in (r / "metrics.jsonl").read_text() for r in runs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "interrupted (SIGTERM); checkpoints saved: [1/2]" in err and "[2/2]" in err, err
    assert "Traceback" not in err
    for r in runs:
        assert (r / "checkpoint.h5").exists() and not (r / "summary.json").exists()
        events = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("event") == "interrupted" for e in events)


def test_a_failing_run_stops_the_others_and_its_error_is_raised(tmp_path):
    """A worker's error: the other running worker is stopped at a checkpoint, then the error is raised."""
    pytest.importorskip("mujoco")
    tc = _tiny_table(tmp_path, "t", steps=100000)
    good = rl_table.Job(1, "[1/2] good", tc.run_config("mingru", 0, "hopper", None, tc.dataset),
                        tmp_path / "t" / "good", "new")
    bad = rl_table.Job(2, "[2/2] bad", tc.run_config("mingru", 0, "hopper", None, str(tmp_path / "missing.h5")),
                       tmp_path / "t" / "bad", "new")
    with pytest.raises(Exception, match="missing.h5"):
        rl_table.run_parallel([good, bad], 2, say=lambda line: None)
    assert (tmp_path / "t" / "good" / "checkpoint.h5").exists()
    assert not (tmp_path / "t" / "good" / "summary.json").exists()
