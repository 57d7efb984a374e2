"""mincore.tasks: the task trainers and the one training loop they share (tasks/loop.py).

    copy         selective copying (tasks/copy.py)
    shakespeare  character-level language model (tasks/shakespeare.py)
    rl           Decision-minRNN on D4RL-format data (to come)

A task module exposes PRESETS, MODELS, config(preset, **overrides) -> Config and a Task class
(see tasks/loop.py for its interface); register it in TASKS by module name. Modules are imported
on first use so `import mincore.tasks` stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["TASKS", "get_task"]

TASKS = {"copy": "mincore.tasks.copy", "shakespeare": "mincore.tasks.shakespeare",
         "rl": "mincore.tasks.rl"}


def get_task(name: str):
    """The task module registered as `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def evaluate_checkpoint(path, engine: str | None = None) -> tuple[dict, dict]:
    """Rebuild the task saved in checkpoint `path`, load its parameters and evaluate on the held-out
    set: (metrics, checkpoint config). Same numbers as the run's summary.json for its final checkpoint."""
    import dataclasses

    from mincore.autograd import load_checkpoint

    ck = load_checkpoint(path)
    meta = ck.config or {}
    if "task" not in meta or "config" not in meta:
        raise ValueError(f"{path}: checkpoint has no task config (not written by `mincore train`?)")
    mod = get_task(meta["task"])
    cfg = mod.from_dict(meta["config"])
    if engine is not None:
        cfg = dataclasses.replace(cfg, engine=engine)
    task = mod.Task(cfg)
    task.model.load_state_dict(ck.params)
    task.model.eval()
    return task.evaluate(), {**meta, "step": ck.step}
