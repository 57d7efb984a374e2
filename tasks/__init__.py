"""mincore.tasks: the task trainers and the one training loop they share (tasks/loop.py).

    copy         selective copying (tasks/copy.py)
    shakespeare  character-level language model (tasks/shakespeare.py)
    rl           Decision-minRNN on D4RL-layout data (tasks/rl/)
    listops      ListOps from the Long Range Arena, the LRU paper's experiment (tasks/listops.py)

The task-module contract. A task module, registered in TASKS by name, exposes
    PRESETS    {name: Config}; "default" (a 2-core CPU, minutes) and "paper" (the published setting)
    MODELS     the values Config.model takes
    THREADS    CPU threads `mincore train` uses unless told otherwise (None: every core)
    OPTIONS    the Config fields `mincore train` sets from options of their own (Option below)
    config(preset="default", **overrides) -> Config    a preset, fields replaced (None values ignored)
    from_dict(d) -> Config                             the Config that config.json / a checkpoint keeps
    Task(cfg)                                          what the loop trains (below)
    train(cfg, out, *, resume=False, force=False, progress=True) -> the summary dict (also in out/summary.json)
    describe(summary) -> str                           the finished run in words (`mincore train`)
    verify_data(meta, cfg, source, how)                optional: refuse data that is not the data the run
                                                       in checkpoint config `meta` read (ValueError)
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

__all__ = ["TASKS", "Option", "get_task", "load_task", "evaluate_checkpoint", "cache_dir", "saved_config",
           "check_saved_engine", "check_saved_data", "data_field", "data_option"]

TASKS = {"copy": "mincore.tasks.copy", "shakespeare": "mincore.tasks.shakespeare",
         "rl": "mincore.tasks.rl", "listops": "mincore.tasks.listops"}


@dataclass(frozen=True)
class Option:
    """A Config field that `mincore train` sets from an option named after it (env: --env)."""

    field: str
    help: str                              # what it is; `mincore train --help` prefixes the task name
    choices: tuple[str, ...] | None = None  # the values it takes (None: any)
    file: bool = False                     # an existing file, stored as an absolute path
    schemes: tuple[str, ...] = ()          # with file: prefixes naming data that is not a file (minari:)

    def names_file(self, value: str) -> bool:
        """Whether `value` of this option is a file path (not one of its schemes' names)."""
        return self.file and not str(value).startswith(self.schemes)


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


def saved_config(meta, source, *, task: str | None = None):
    """(task module, Config) of the run whose checkpoint config is `meta` (what `mincore train` writes:
    {"task": name, "config": {...}, ...}); a ValueError naming `source` when it is anything else (not an
    object, no task or config, an unknown task, another task than `task`, fields that make no valid Config)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("task"), str) or not isinstance(meta.get("config"), dict):
        got = (f"task {type(meta.get('task')).__name__}, config {type(meta.get('config')).__name__}"
               if isinstance(meta, dict) else type(meta).__name__)
        raise ValueError(f"{source}: checkpoint has no task config (got {got}, expected a task name and a config "
                         f"object; not written by `mincore train`?)")
    name = meta["task"]
    if name not in TASKS:
        raise ValueError(f"{source}: checkpoint of an unknown task {name!r}; known: {', '.join(TASKS)}")
    if task is not None and name != task:
        raise ValueError(f"{source}: checkpoint of a {name!r} run, not {task!r}")
    mod = get_task(name)
    try:
        cfg = mod.from_dict(meta["config"])
        _check_types(cfg)
        cfg.validate()
    except (TypeError, ValueError) as e:  # a wrong field, or a value of the wrong type or range
        raise ValueError(f"{source}: the saved {name} config is not valid ({e})") from None
    return mod, cfg


# a Config field's annotation -> the JSON-born values it takes (an int is a float too)
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "tuple": (tuple, list),
          "None": (type(None),)}


def _check_types(cfg) -> None:
    """A TypeError naming the first field of `cfg` whose value is not of its annotated type (a Config
    read from JSON takes whatever the file holds; validate() would fail on it less clearly)."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        names = [t.strip() for t in str(f.type).split("|")]
        if not all(t in _TYPES for t in names):
            continue  # an annotation this check does not know: validate() decides
        value = getattr(cfg, f.name)
        ok = isinstance(value, sum((_TYPES[t] for t in names), ()))
        if not ok or (isinstance(value, bool) and "bool" not in names):
            raise TypeError(f"{f.name} is {value!r} ({type(value).__name__}), expected {' or '.join(names)}")


def check_saved_engine(engine, source, how: str) -> None:
    """Refuse a run's saved engine that is unknown or cannot run here (a ValueError naming `source`, why,
    and `how` to proceed); None (the default engine) passes."""
    if engine is None:
        return
    from mincore.backend import engines

    table = engines()
    if engine not in table:
        raise ValueError(f"{source}: the run's engine {engine!r} is unknown; expected one of {', '.join(table)}")
    if not table[engine]["available"]:
        raise ValueError(f"{source}: the run was trained with engine {engine!r}, which cannot run here "
                         f"({table[engine]['reason']}); {how}")


def data_option(mod) -> Option | None:
    """The Option of the data file a task reads (its file Option: `data`, `dataset`), or None."""
    return next((o for o in mod.OPTIONS if o.file), None)


def data_field(mod) -> str | None:
    """The Config field of the data file a task reads, or None."""
    opt = data_option(mod)
    return opt.field if opt else None


def check_saved_data(mod, meta: dict, cfg, source, how: str) -> None:
    """Refuse the data `cfg` names when it is missing, or is not the data the run in checkpoint config
    `meta` was trained on (the task's verify_data: a digest saved with the run); ValueErrors naming
    `source`, the file, and `how` to proceed."""
    opt = data_option(mod)
    path = getattr(cfg, opt.field) if opt else None
    if path and opt.names_file(path) and not os.path.isfile(path):
        raise ValueError(f"{source}: the run's {opt.field} file {path} does not exist; {how}")
    verify = getattr(mod, "verify_data", None)
    if verify is not None:
        verify(meta, cfg, source, how)


def load_task(path, engine: str | None = None, data=None):
    """Rebuild the task saved in checkpoint `path` with its parameters loaded, in evaluation mode:
    (task, checkpoint config with "step"). `engine` replaces the run's engine; `data` the file the task
    reads (the run's, moved), which must be the data it was trained on where the task can tell
    (verify_data). ValueError for a checkpoint that does not describe a runnable task: messages name the
    file and what to do."""
    import dataclasses

    from mincore.autograd import load_checkpoint

    from .loop import place

    ck = load_checkpoint(path)
    mod, cfg = saved_config(ck.config, path)
    if data is not None:
        opt = data_option(mod)
        if opt is None:
            raise ValueError(f"{path}: a {ck.config['task']} run reads no data file; drop the data argument (--data)")
        cfg = dataclasses.replace(cfg, **{opt.field: os.path.abspath(data) if opt.names_file(data) else data})
    if engine is None:
        check_saved_engine(cfg.engine, path, "evaluate it with another engine (mincore eval --engine numba)")
    else:
        cfg = dataclasses.replace(cfg, engine=engine)
    check_saved_data(mod, ck.config, cfg, path, "pass the data it was trained on with --data PATH")
    task = mod.Task(cfg)
    task.xp = place(task.model, cfg.engine)
    try:
        task.model.load_state_dict(ck.params)
    except (KeyError, ValueError) as e:  # names or shapes that are not the model's (an edited config)
        raise ValueError(f"{path}: the saved parameters do not fit the model its config describes "
                         f"({e.args[0] if e.args else e})") from None
    task.model.eval()
    return task, {**ck.config, "step": ck.step}


def evaluate_checkpoint(path, engine: str | None = None, data=None) -> tuple[dict, dict]:
    """The held-out metrics of the task saved in checkpoint `path` (load_task), and its checkpoint
    config: the same numbers as the run's summary.json for its final checkpoint."""
    task, config = load_task(path, engine, data)
    return task.evaluate(), config
