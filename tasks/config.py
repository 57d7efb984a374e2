"""LoopConfig, the settings every task's Config starts from, and the two ways a Config is made:
from a named preset, and back from the dict that config.json and every checkpoint keep; with them,
task_functions: the config, from_dict, train and describe a task module exposes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["LoopConfig", "preset_config", "config_from_dict", "describe", "task_functions"]


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000                   # optimizer steps (the cosine schedule ends here)
    batch_size: int = 64                # sequences per optimizer step
    micro_batch: int = 0                # sequences per forward/backward (0 or >= batch: whole batch)
    lr: float = 1e-3                    # peak AdamW learning rate
    warmup: int = 100                   # linear warmup steps, then cosine decay to lr * min_lr_factor
    min_lr_factor: float = 0.0          # final lr as a fraction of the peak
    weight_decay: float = 0.05          # decoupled decay on weight matrices (task decides which)
    betas: tuple = (0.9, 0.999)         # AdamW moment decay rates
    clip: float = 1.0                   # global gradient-norm clip (0: off)
    eval_every: int = 250               # evaluate + checkpoint every this many steps (and at the end)
    log_every: int = 10                 # training metrics to metrics.jsonl every this many steps
    patience: int = 0                   # stop after this many evals without improvement (0: never)
    seed: int = 0                       # model init, dropout and training data
    engine: str | None = None           # kernel engine (None: numba on CPU, cupy on GPU)

    def validate(self):
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        mb = min(self.micro_batch or self.batch_size, self.batch_size)
        if mb < 1 or self.batch_size % mb:
            raise ValueError(f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


def preset_config(presets: dict, preset: str, **overrides):
    """presets[preset] with the given fields replaced (None values are ignored)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(presets)}")
    return dataclasses.replace(presets[preset], **{k: v for k, v in overrides.items() if v is not None})


def config_from_dict(cls, d: dict, task: str):
    """The Config saved in config.json / a checkpoint (JSON lists back to tuples); unknown fields refused."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {task}-task config fields {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ------------------------------------------------------------------------------ task-module helpers
def describe(summary: dict, metric: str) -> str:
    """A finished run in one line: task, model, the held-out `metric` (and the loss when the metric is
    another figure), steps, time, status."""
    s, wall = summary, summary["wall_seconds"]
    loss = f" (loss {s['loss']:.4f})" if metric != "loss" else ""
    took = f"{int(wall // 60)}m{wall % 60:04.1f}s" if wall >= 60 else f"{wall:.1f}s"
    return (f"{s['task']} {s.get('model', '')}: held-out {metric} {s[metric]:.4f}{loss} after {s['steps']} "
            f"steps in {took} [{s['status']}]")


def task_functions(name: str, config_cls, presets: dict, task_cls):
    """config, from_dict, train and describe of a task module (the contract in mincore.tasks), the
    same for every task whose Task(cfg) is all that training needs."""
    def config(preset: str = "default", **overrides):
        """A preset with some fields replaced (None values are ignored)."""
        return preset_config(presets, preset, **overrides)

    def from_dict(d: dict):
        """The Config saved in config.json / a checkpoint."""
        return config_from_dict(config_cls, d, name)

    def train_task(cfg, out=f"runs/{name}", *, resume: bool = False, force: bool = False,
                   progress: bool = True) -> dict:
        """Train the task into `out` (files: mincore.tasks.rundir); returns the summary. A folder
        holding a run is refused unless `resume` continues it or `force` replaces it."""
        from .loop import train  # the loop imports this module

        return train(task_cls(cfg), cfg, out, task_name=name, resume=resume, force=force, progress=progress)

    def describe_run(summary: dict) -> str:
        """The finished run in words (`mincore train` prints it)."""
        return describe(summary, task_cls.metric)

    train_task.__name__ = train_task.__qualname__ = "train"
    describe_run.__name__ = describe_run.__qualname__ = "describe"
    return config, from_dict, train_task, describe_run
