"""mincore.tasks: the task trainers and the one training loop they share (tasks/loop.py).

    copy         selective copying (tasks/copy.py)
    shakespeare  character-level language model (tasks/shakespeare.py)
    rl           Decision-minRNN on D4RL-layout data (tasks/rl/)

The task-module contract. A task module, registered in TASKS by name, exposes
    PRESETS    {name: Config}; "default" (a 2-core CPU, minutes) and "paper" (the published setting)
    MODELS     the values Config.model takes
    THREADS    CPU threads `mincore train` uses unless told otherwise (None: every core)
    OPTIONS    the Config fields `mincore train` sets from options of their own (Option below)
    config(preset="default", **overrides) -> Config    a preset, fields replaced (None values ignored)
    from_dict(d) -> Config                             the Config that config.json / a checkpoint keeps
    Task(cfg)                                          what the loop trains (below)
    train(cfg, out, *, resume=False, progress=True) -> the summary dict (also in out/summary.json)
    describe(summary) -> str                           the finished run in words (`mincore train`)
Config is a frozen dataclass deriving from LoopConfig (tasks/config.py). For a task whose Task(cfg)
is all that training needs, loop.task_functions(...) gives config, from_dict, train and describe.

A Task has
    model                     a mincore.autograd Module, built on the host (NumPy arrays)
    xp                        numpy; the loop sets the module of the engine's arrays when it moves
                              the model there (loop.place): batches and held-out inputs use it
    metric, higher_is_better  the held-out number early stopping and the progress bar watch
    param_groups()            AdamW parameter groups (which parameters decay)
    batch(rng, size)          a training batch drawn from the numpy Generator `rng`, arrays of xp
    loss(batch)               (scalar loss Tensor, {name: float} training metrics)
    evaluate()                {name: float} on the fixed held-out set, "loss" included; no RNG use
    meta()                    optional: more keys for config.json and checkpoints (a vocabulary, ...)

Task modules are imported on first use (get_task), so `import mincore.tasks` stays light.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TASKS", "Option", "get_task", "evaluate_checkpoint", "cache_dir"]

TASKS = {"copy": "mincore.tasks.copy", "shakespeare": "mincore.tasks.shakespeare",
         "rl": "mincore.tasks.rl"}


@dataclass(frozen=True)
class Option:
    """A Config field that `mincore train` sets from an option named after it (env: --env)."""

    field: str
    help: str                              # what it is; `mincore train --help` prefixes the task name
    choices: tuple[str, ...] | None = None  # the values it takes (None: any)
    file: bool = False                     # an existing file, stored as an absolute path


def get_task(name: str):
    """The task module registered as `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])


def cache_dir(*parts: str) -> Path:
    """The per-user cache of downloaded and collected data (not created here):
    $MINCORE_CACHE, else $XDG_CACHE_HOME/mincore, else ~/.cache/mincore; `parts` name a folder in it."""
    if os.environ.get("MINCORE_CACHE"):
        root = Path(os.environ["MINCORE_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mincore"
    return root.joinpath(*parts)


def evaluate_checkpoint(path, engine: str | None = None) -> tuple[dict, dict]:
    """Rebuild the task saved in checkpoint `path`, load its parameters and evaluate on the held-out
    set: (metrics, checkpoint config). Same numbers as the run's summary.json for its final checkpoint."""
    import dataclasses

    from mincore.autograd import load_checkpoint

    from .loop import place

    ck = load_checkpoint(path)
    meta = ck.config or {}
    if "task" not in meta or "config" not in meta:
        raise ValueError(f"{path}: checkpoint has no task config (not written by `mincore train`?)")
    mod = get_task(meta["task"])
    cfg = mod.from_dict(meta["config"])
    if engine is not None:
        cfg = dataclasses.replace(cfg, engine=engine)
    task = mod.Task(cfg)
    task.xp = place(task.model, cfg.engine)
    task.model.load_state_dict(ck.params)
    task.model.eval()
    return task.evaluate(), {**meta, "step": ck.step}
