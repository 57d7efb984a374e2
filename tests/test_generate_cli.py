"""`mincore generate`: the fused step and the per-operation step give the same text for a seed,
--samples generates a batch, --threads limits the threads (and is checked), and a model the fused
step cannot run falls back with a warning that says why."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from mincore.cli.main import main
from mincore.tasks import shakespeare as S

WORDS = "the king and queen of England shall speak now to thee my lord ROMEO: JULIET, what say you?".split()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    text = tmp / "small.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(300)) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(S.PRESETS, "default", S.config("default", d_model=16, n_layers=2, context=32, mlp_mult=2,
                                                  eval_chunk=700))
        r = CliRunner().invoke(main, ["train", "--task", "shakespeare", "--steps", "2", "--eval-every", "2",
                                      "--batch-size", "4", "--data", str(text), "--out", str(tmp / "run"),
                                      "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return str(tmp / "run" / "checkpoint.h5")


def run(checkpoint, *args):
    r = CliRunner().invoke(main, ["generate", "--checkpoint", checkpoint, "--prompt", "ROMEO:", "--tokens", "60",
                                  "--seed", "3", *args])
    return r


def test_fused_and_per_operation_steps_print_the_same_text(checkpoint):
    fused, ops = run(checkpoint, "--top-k", "5"), run(checkpoint, "--top-k", "5", "--step", "ops")
    assert fused.exit_code == 0 and ops.exit_code == 0, fused.output + ops.output
    assert fused.stdout == ops.stdout and fused.stdout.startswith("ROMEO:") and len(fused.stdout) == 6 + 60 + 1
    assert "fused step" in fused.stderr and "per-operation step" in ops.stderr and "tokens/s" in fused.stderr


def test_samples_are_generated_as_one_batch(checkpoint):
    r = run(checkpoint, "--samples", "3", "--threads", "2")
    assert r.exit_code == 0, r.output
    parts = r.stdout.rstrip("\n").split("\n\n")
    assert [p.split("\n")[0] for p in parts] == [f"--- sample {i} of 3 ---" for i in (1, 2, 3)]
    bodies = [p.split("\n", 1)[1] for p in parts]
    assert all(b.startswith("ROMEO:") and len(b) == 66 for b in bodies) and len(set(bodies)) > 1
    assert "180 characters (3 samples)" in r.stderr
    one = run(checkpoint)  # the first sample of a batch is not the single sample (other draws), but as long
    assert one.exit_code == 0 and len(one.stdout) == 67


def test_threads_are_limited_and_checked(checkpoint, monkeypatch):
    from mincore import backend as T

    seen, orig = [], T.cpu_threads
    monkeypatch.setattr(T, "cpu_threads", lambda n: (seen.append(n), orig(n))[1])
    assert run(checkpoint).exit_code == 0 and run(checkpoint, "--threads", "2").exit_code == 0
    assert seen == [1, 2]
    bad = run(checkpoint, "--threads", "0")
    assert bad.exit_code == 2 and "--threads" in bad.output
    many = run(checkpoint, "--threads", "4096")
    assert many.exit_code == 0 and "Warning: --threads 4096" in many.stderr


def test_a_model_the_fused_step_cannot_run_falls_back_and_says_why(checkpoint, monkeypatch):
    import mincore.inference as I

    monkeypatch.setattr(I, "fused_stepper", lambda model: (None, "a reason"))
    r = run(checkpoint)
    assert r.exit_code == 0 and "fused step cannot run this model (a reason)" in r.stderr
    assert "per-operation step" in r.stderr and r.stdout == run(checkpoint, "--step", "ops").stdout
