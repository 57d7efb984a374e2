"""`mincore rl score`: a trained rl run scored again in the simulator, with its own target return (the
numbers of its summary.json, exactly) or others; refusals. Tiny runs on a synthetic hopper file with
10-step rollouts in the real simulator."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rl_files import hopper_file

from mincore.cli.main import main
from mincore.tasks import copy as C
from mincore.tasks.rl import table as rl_table

pytest.importorskip("mujoco")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A Decision-minGRU and a BC run of 3 steps on a tiny hopper file (through the table): their folders."""
    d = tmp_path_factory.mktemp("score")
    tc = rl_table.TableConfig(envs=("hopper",), dataset=hopper_file(d / "hopper-tiny.h5"), seeds=1,
                              models=("mingru",), baselines=("bc",), steps=3, episodes=3, horizon=10,
                              out=str(d / "t"))
    rl_table.run(tc, progress=False, say=lambda line: None)
    return {m: d / "t" / "hopper-hopper-tiny" / f"{m}-seed0" for m in ("mingru", "bc")}


def _score(*args):
    return CliRunner().invoke(main, ["rl", "score", *map(str, args), "--quiet"])


@pytest.mark.parametrize("model", ["mingru", "bc"])
def test_without_targets_the_run_scores_as_its_summary_says(runs, model):
    r = _score("--checkpoint", runs[model] / "checkpoint.h5", "--json")
    assert r.exit_code == 0, r.output
    got, summary = json.loads(r.stdout), json.loads((runs[model] / "summary.json").read_text())
    assert len(got["scores"]) == 1 and got["step"] == 3 and got["model"] == model
    row = got["scores"][0]
    assert row["returns"] == summary["returns"] and row["normalized_score"] == summary["normalized_score"]
    assert row["target_return"] == summary["target_return"]


def test_one_score_per_target_return(runs):
    ck = runs["mingru"] / "checkpoint.h5"
    r = _score("--checkpoint", ck, "--target-return", "5,50", "--episodes", "2", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["scores"]
    assert [x["target_return"] for x in rows] == [5.0, 50.0] and all(x["episodes"] == 2 for x in rows)
    r = _score("--checkpoint", ck, "--target-return", "5")  # the table, in words
    assert r.exit_code == 0 and "| 5 |" in r.stdout and "Decision-minGRU on" in r.stdout, r.output


@pytest.mark.parametrize("args, needle", [(["--target-return", "100"], "takes no target return"),
                                          (["--target-return", "1e3,abc"], "comma-separated returns"),
                                          (["--target-return", "nan"], "finite")])
def test_bad_targets_refused(runs, args, needle):
    model = "bc" if "100" in args else "mingru"
    r = _score("--checkpoint", runs[model] / "checkpoint.h5", *args)
    assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output


def test_a_run_of_another_task_is_refused(tmp_path):
    out = tmp_path / "copy"
    C.train(C.config("default", steps=1, eval_every=1, d_model=8, n_layers=1, seq_len=20, n_data=4, eval_size=8,
                     eval_batch=8), out, progress=False)
    r = _score("--checkpoint", out / "checkpoint.h5")
    assert r.exit_code != 0 and "is a copy run; expected an rl run" in r.output, r.output
