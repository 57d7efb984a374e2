"""The task-module contract of mincore.tasks, for every registered task: the names it promises, and
training on the arrays the engine takes (the engine table decides; the loop moves the model, and
every batch and held-out input follows it), which a GPU engine needs and the CPU cannot show."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mincore import backend
from mincore.tasks import TASKS, Option, get_task, loop
from mincore.tasks import copy as C
from mincore.tasks import shakespeare as S
from mincore.tasks.rl import data as rl_data
from mincore.tasks.rl.eval import BCPolicy, DecisionPolicy
from mincore.tasks.rl.model import BCMLP, DecisionRNN

CONTRACT = ("PRESETS", "MODELS", "THREADS", "OPTIONS", "config", "from_dict", "Task", "train", "describe")


@pytest.mark.parametrize("name", TASKS)
def test_every_task_module_keeps_the_contract(name):
    mod = get_task(name)
    for attr in CONTRACT:
        assert hasattr(mod, attr), attr
    assert {"default", "paper"} <= set(mod.PRESETS) and mod.PRESETS["default"].model in mod.MODELS
    assert all(isinstance(o, Option) and o.field in {f.name for f in dataclasses.fields(mod.PRESETS["default"])}
               for o in mod.OPTIONS)
    cfg = mod.config("default", steps=3)
    assert cfg.steps == 3 and mod.from_dict(dataclasses.asdict(cfg)) == cfg
    assert {"metric", "higher_is_better"} <= set(vars(mod.Task))


class Device:
    """Stands in for the array module of a GPU engine: it hands out NumPy arrays, but remembers
    every array it made, so a test can tell arrays moved "to the device" from host arrays."""

    def __init__(self):
        self.made = []

    def asarray(self, a, dtype=None):
        out = np.array(a, dtype=dtype, copy=True)
        self.made.append(out)
        return out

    def owns(self, a) -> bool:
        return any(a is m for m in self.made)

    def __getattr__(self, name):
        return getattr(np, name)


def _copy(tmp_path):
    cfg = C.config("default", seq_len=8, n_data=2, d_model=8, n_layers=2, batch_size=2, eval_size=4, eval_batch=2)
    return C.CopyTask(cfg)


def _shakespeare(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    cfg = S.config("default", data=str(text), context=8, d_model=8, n_layers=1, mlp_mult=1, batch_size=2,
                   eval_chunk=64)
    return S.ShakespeareTask(cfg)


def _rl(tmp_path, model="mingru"):
    rng, n = np.random.default_rng(0), 40
    flags = np.zeros(n, bool)
    flags[9::10] = True
    data = rl_data.from_arrays({"observations": rng.standard_normal((n, 3)).astype(np.float32),
                                "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                                "rewards": rng.random(n).astype(np.float32), "terminals": np.zeros(n, bool),
                                "timeouts": flags})
    cfg = get_task("rl").config("default", model=model, K=3, d_model=8, n_layers=1, batch_size=2, eval_windows=4,
                                bc_hidden=8)
    return get_task("rl").RLTask(cfg, data)


@pytest.mark.parametrize("make", [_copy, _shakespeare, _rl, lambda p: _rl(p, "bc")],
                         ids=["copy", "shakespeare", "rl", "rl-bc"])
def test_every_task_trains_on_the_arrays_its_engine_takes(make, tmp_path, monkeypatch):
    device = Device()
    asked = []
    monkeypatch.setattr(loop, "engine_array_module", lambda engine: asked.append(engine) or device)
    task = make(tmp_path)
    cfg = dataclasses.replace(task.cfg, steps=2, eval_every=1, engine="numba")
    seen, forward = [], task.model.forward
    task.model.forward = lambda *a, **k: (seen.extend(x for x in a if isinstance(x, np.ndarray)), forward(*a, **k))[1]
    loop.train(task, cfg, tmp_path / "run", task_name="t", progress=False)
    assert asked == ["numba"] and task.xp is device
    assert all(device.owns(p.data) for p in task.model.parameters())  # the model moved once, by the loop
    assert seen and all(device.owns(x) for x in seen)  # training and held-out inputs followed it


def _spy(model, names, seen):
    """Record the array arguments of the model's methods `names`."""
    for name in (n for n in names if hasattr(model, n)):
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, **k: (seen.extend(x for x in a if isinstance(x, np.ndarray)),
                                                         _m(*a, **k))[1])


@pytest.mark.parametrize("mode", ["window", "carry", "bc"])
def test_rl_policies_feed_the_model_its_arrays_and_act_on_the_host(mode):
    device, seen, mean, std = Device(), [], np.zeros(4, np.float32), np.ones(4, np.float32)
    if mode == "bc":
        model = BCMLP(4, 2, hidden=8)
        policy = BCPolicy(model, mean, std, xp=device)
    else:
        model = DecisionRNN(4, 2, d_model=8, n_layers=1, max_timestep=50)
        policy = DecisionPolicy(model, mean, std, K=2, mode=mode, xp=device)
    model.to(device).eval()
    _spy(model, ("forward", "act_step", "push_action"), seen)
    policy.reset(3)
    for _ in range(3):
        a = policy.act(np.ones((3, 4), np.float32))
        assert type(a) is np.ndarray and a.shape == (3, 2) and not device.owns(a)
        policy.observe(a, np.ones(3))
    assert seen and all(device.owns(x) for x in seen)


def test_the_engine_table_says_which_arrays_an_engine_takes(monkeypatch):
    monkeypatch.delenv("MINCORE_ENGINE", raising=False)
    assert {e: backend.engine_arrays(e) for e in ("numpy", "logspace", "numba", "numba-cuda", "cupy")} == \
        {"numpy": "numpy", "logspace": "numpy", "numba": "numpy", "numba-cuda": "cupy", "cupy": "cupy"}
    assert backend.engine_arrays(None) == "numpy" and backend.engine_array_module("numba") is np
    monkeypatch.setenv("MINCORE_ENGINE", "cupy")  # None means the engine resolve_engine would pick
    assert backend.engine_arrays(None) == "cupy"
    with pytest.raises(ValueError, match="engine: unknown engine 'fortran'"):
        backend.engine_arrays("fortran")


def test_one_cache_rule_for_every_task(tmp_path, monkeypatch):
    from mincore.tasks import chardata
    from mincore.tasks.rl import collect

    monkeypatch.delenv("MINCORE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert chardata.cache_dir() == tmp_path / "xdg" / "mincore" and collect.cache_dir() == chardata.cache_dir() / "rl"
    monkeypatch.setenv("MINCORE_CACHE", str(tmp_path / "own"))
    assert chardata.cache_dir() == tmp_path / "own" and collect.cache_dir() == tmp_path / "own" / "rl"


def test_describe_names_the_loss_once_when_it_is_the_metric():
    s = {"task": "t", "model": "mingru", "loss": 1.5, "accuracy": 0.25, "steps": 3, "wall_seconds": 61.0,
         "status": "completed"}
    assert loop.describe(s, "loss") == "t mingru: held-out loss 1.5000 after 3 steps in 1m01.0s [completed]"
    assert "held-out accuracy 0.2500 (loss 1.5000)" in loop.describe(s, "accuracy")
