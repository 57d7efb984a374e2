"""Every expected failure of the `mincore` command line is one line starting with "Error:" and a
non-zero exit, never a traceback: damaged or edited checkpoints (built from a real tiny copy run),
sizes that cannot fit, GPU-only runs on a CPU machine, missing optional modules and bad option values."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mincore.autograd import load_checkpoint, save_checkpoint
from mincore.cli.main import main
from mincore.tasks import copy as C

TINY = dict(d_model=8, n_layers=2, expansion=2.0, seq_len=20, n_data=4, eval_size=16, eval_batch=16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real copy run of 2 steps (a tiny model): its folder, checkpoint.h5 included."""
    out = tmp_path_factory.mktemp("copy") / "run"
    C.train(C.config("default", steps=2, eval_every=2, **TINY), out, progress=False)
    return out


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(C.PRESETS, "default", C.config("default", **TINY))


def one_line_error(r, *needles):
    """Non-zero exit through click (no exception escaped), exactly one "Error:" line holding every
    needle, as the last line of the error output, and no traceback."""
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------ broken checkpoints
def rewrite(src_dir, dst_dir, *, params=None, config=None, optimizer=None, rng=None):
    """A copy of the run folder whose checkpoint is the real one with parts replaced by the given
    functions (each takes the part and returns the new one), written by save_checkpoint (valid digest)."""
    shutil.copytree(src_dir, dst_dir)
    ck = load_checkpoint(src_dir / "checkpoint.h5")
    opt = {"t": ck.optimizer["t"], "groups": ck.optimizer["groups"], "state": ck.optimizer["state"]}
    opt = optimizer(opt) if optimizer else opt
    state = rng(dict(ck.rng_state)) if rng else ck.rng_state
    meta = config(json.loads(json.dumps(ck.config))) if config else ck.config
    save_checkpoint(dst_dir / "checkpoint.h5", params(dict(ck.params)) if params else ck.params,
                    types.SimpleNamespace(state_dict=lambda: opt), step=ck.step,
                    rng=types.SimpleNamespace(bit_generator=types.SimpleNamespace(state=state)), config=meta)
    return dst_dir


def edit_attr(path, name, value):
    """Replace a root attribute with h5py; the file becomes a version-1 checkpoint (no digest), which
    loads unchecked, so the edit reaches the reader's later checks."""
    with h5py.File(path, "r+") as f:
        f.attrs[name] = value
        f.attrs["version"] = 1
        del f.attrs["sha256"]


def _set(path, value):
    def edit(meta):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = meta
        for k in keys[:-1]:
            target = target[k]
        if value is _DROP:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
        return meta
    return edit


_DROP = object()
EDITS = {
    "missing parameter": dict(params=lambda p: {k: v for k, v in p.items() if k != "head.weight"}),
    "extra parameter": dict(params=lambda p: {**p, "extra.weight": np.zeros(3, np.float32)}),
    "edited n_layers": dict(config=_set("config.n_layers", 3)),
    "null checkpoint config": dict(config=lambda meta: None),
    "list checkpoint config": dict(config=lambda meta: [meta]),
    "string checkpoint config": dict(config=lambda meta: "copy"),
    "null config": dict(config=_set("config", None)),
    "list config": dict(config=_set("config", [1, 2])),
    "string config": dict(config=_set("config", "mingru")),
    "wrong-typed field": dict(config=_set("config.steps", "many")),
    "unknown task": dict(config=_set("task", "chess")),
    "GPU engine": dict(config=_set("config.engine", "cupy")),
}
EVAL_NEEDLES = {"missing parameter": ["do not fit", "head.weight"], "extra parameter": ["extra.weight"],
                "edited n_layers": ["do not fit", "blocks.2"], "null checkpoint config": ["no task config"],
                "list checkpoint config": ["list"], "string checkpoint config": ["str"],
                "null config": ["no task config"],
                "list config": ["no task config"], "string config": ["no task config"],
                "wrong-typed field": ["config is not valid", "steps is 'many'"],
                "unknown task": ["unknown task 'chess'"],
                "GPU engine": ["engine 'cupy'", "cannot run here", "--engine numba"]}


@pytest.mark.parametrize("case", EDITS)
def test_eval_of_an_edited_checkpoint_is_one_line(case, run_dir, tmp_path):
    d = rewrite(run_dir, tmp_path / "run", **EDITS[case])
    one_line_error(invoke("eval", "--checkpoint", d / "checkpoint.h5"), str(d / "checkpoint.h5"),
                   *EVAL_NEEDLES[case])


def test_a_gpu_run_evaluates_on_the_cpu_when_asked(run_dir, tmp_path):
    d = rewrite(run_dir, tmp_path / "run", **EDITS["GPU engine"])
    r = invoke("eval", "--checkpoint", d / "checkpoint.h5", "--engine", "numba", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["loss"] == json.loads((run_dir / "summary.json").read_text())["loss"]


def _state_index(opt):
    return {**opt, "state": {**opt["state"], 999: opt["state"][0]}}


RESUME_EDITS = {
    "missing parameter": (EDITS["missing parameter"], ["head.weight"]),
    "edited n_layers": (EDITS["edited n_layers"], ["blocks.2"]),
    "null config": (EDITS["null config"], ["no task config"]),
    "list checkpoint config": (EDITS["list checkpoint config"], ["list"]),
    "GPU engine": (EDITS["GPU engine"], ["engine 'cupy'", "cannot run here"]),
    "no loop state": (dict(config=_set("loop", _DROP)), ["no training-loop state", "mincore eval"]),
    "loop state without bad_evals": (dict(config=_set("loop.bad_evals", _DROP)), ["lacks bad_evals"]),
    "dropout rng without state": (dict(config=_set("loop.rngs.0.state", _DROP)), ["random state 0"]),
    "optimizer index out of range": (dict(optimizer=_state_index), ["parameter index 999"]),
    "data rng without state": (dict(rng=lambda s: {k: v for k, v in s.items() if k != "state"}), ["rng state"]),
}


@pytest.mark.parametrize("case", RESUME_EDITS)
def test_resume_of_an_edited_checkpoint_is_one_line(case, run_dir, tmp_path):
    edit, needles = RESUME_EDITS[case]
    d = rewrite(run_dir, tmp_path / "run", **edit)
    one_line_error(invoke("train", "--task", "copy", "--out", d, "--resume", "--quiet"),
                   str(d / "checkpoint.h5"), *needles)


@pytest.mark.filterwarnings("ignore:.*without an integrity digest")
def test_resume_without_optimizer_step_count_is_one_line(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    opt = json.loads(h5py.File(d / "checkpoint.h5", "r").attrs["optimizer"])
    edit_attr(d / "checkpoint.h5", "optimizer", json.dumps({"groups": opt["groups"]}))
    one_line_error(invoke("train", "--task", "copy", "--out", d, "--resume", "--quiet"), "lacks t")


# ------------------------------------------------------------------------------ sizes and machines
def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path):
    one_line_error(invoke("train", "--task", "copy", "--batch-size", 100_000_000, "--out", tmp_path, "--quiet"),
                   "--batch-size", "100000000 sequences", "GiB of memory")
    assert not (tmp_path / "config.json").exists()


def test_a_shape_that_cannot_fit_is_refused_before_timing():
    one_line_error(invoke("bench", "kernels", "--engine", "numba", "--no-torch", "--shape", "100000,100000,1000"),
                   "--shape", "100000,100000,1000", "GiB of memory")


def test_out_of_memory_is_one_line_with_the_size(run_dir, monkeypatch):
    import mincore.tasks

    monkeypatch.setattr(mincore.tasks, "evaluate_checkpoint", lambda *a: np.empty(1 << 62, np.uint8))
    one_line_error(invoke("eval", "--checkpoint", run_dir / "checkpoint.h5"),
                   "out of memory", "EiB", "does not fit", "GiB of memory")


def test_a_missing_optional_module_names_the_extra(monkeypatch):
    """An engine the table calls available whose module is not there (a broken CuPy install)."""
    from mincore import backend

    table = backend.engines()
    table["cupy"] = {**table["cupy"], "available": True, "reason": None}
    monkeypatch.setattr(backend, "engines", lambda: table)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ModuleNotFoundError
    one_line_error(invoke("bench", "kernels", "--gpu", "--engine", "cupy", "--quick"),
                   "cupy is not installed", "mincore[cuda12]", "--engine numba")


def test_rl_info_on_a_dangling_link_is_one_line(tmp_path):
    from mincore.tasks.rl import data as rl_data

    n, path = 20, tmp_path / "d.h5"
    rl_data.save(path, {"observations": np.zeros((n, 3), np.float32), "actions": np.zeros((n, 2), np.float32),
                        "rewards": np.ones(n, np.float32), "terminals": np.zeros(n, bool),
                        "timeouts": np.arange(n) % 10 == 9})
    with h5py.File(path, "r+") as f:
        del f["rewards"]
        f["rewards"] = h5py.SoftLink("/nowhere")
    one_line_error(invoke("rl", "info", path), str(path))


# ------------------------------------------------------------------------------ option values
@pytest.mark.parametrize("args, needle", [
    (["generate", "--checkpoint", "CK", "--temperature", "nan"], "--temperature"),
    (["generate", "--checkpoint", "CK", "--temperature", "inf"], "--temperature"),
    (["generate", "--checkpoint", "CK", "--temperature", "-1"], "--temperature"),
    (["generate", "--checkpoint", "CK", "--seed", "-1"], "--seed"),
    (["train", "--seed", "-1"], "--seed"),
    (["rl", "collect", "--env", "hopper", "--kind", "medium", "--seed", "-1"], "--seed"),
    (["train", "--out", ""], "--out"),
    (["rl", "collect", "--env", "hopper", "--kind", "medium", "--out", ""], "--out"),
    (["bench", "kernels", "--quick", "--json", ""], "--json"),
    (["eval", "--checkpoint", "CK", "--data", "/no/such/text.txt"], "--data"),
    (["eval", "--checkpoint", "CK", "--data", __file__], "reads no data file"),
])
def test_bad_option_values_name_the_option(args, needle, run_dir):
    args = [str(run_dir / "checkpoint.h5") if a == "CK" else a for a in args]
    one_line_error(invoke(*args), needle)


def test_threads_above_the_cpus_are_capped_with_a_warning(tmp_path, tiny_preset, monkeypatch):
    import numba
    from threadpoolctl import threadpool_info

    from mincore.backend import cpu_count

    seen, orig = [], C.train

    def train(*a, **k):
        seen.append((numba.get_num_threads(), [i["num_threads"] for i in threadpool_info()]))
        return orig(*a, **k)
    monkeypatch.setattr(C, "train", train)
    many = cpu_count() + 5
    r = invoke("train", "--task", "copy", "--steps", 1, "--eval-every", 1, "--threads", many, "--out", tmp_path,
               "--quiet")
    assert r.exit_code == 0, r.output
    assert f"Warning: --threads {many} is more than the {cpu_count()} CPUs" in r.stderr
    numba_threads, blas = seen[0]
    assert numba_threads <= cpu_count() and all(n <= cpu_count() for n in blas)


def test_a_real_process_prints_one_line_and_exits_non_zero(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from mincore.cli.main import main; main()", "train", "--batch-size",
                        "100000000",
                        "--out", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("Error:")] == r.stderr.splitlines()[-1:]


# ------------------------------------------------------------------------------ a folder holding a run
def test_force_replaces_a_run_and_is_refused_with_resume(run_dir, tmp_path, tiny_preset):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    args = ["train", "--task", "copy", "--steps", 1, "--eval-every", 1, "--out", out, "--quiet"]
    one_line_error(invoke(*args), "--force")
    r = invoke(*args, "--force")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "checkpoint.h5").step == 1
    one_line_error(invoke(*args, "--force", "--resume"), "--resume", "--force")
