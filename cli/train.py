"""`mincore train` and `mincore eval`: build a task Config, call the shared loop, report the files."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from mincore.tasks import TASKS

from .options import engine_option, models_help, task_options, task_overrides, threads_help

# the settings a resumed run takes from its checkpoint (with the task's own options): never given again
SETTINGS = ("preset", "model", "steps", "batch_size", "eval_every", "seed", "engine")


@click.command()
@click.option("--task", type=click.Choice(tuple(TASKS)), default="copy", show_default=True,
              help="Which task to train.")
@click.option("--preset", default="default", show_default=True,
              help="Named settings: default (2-core CPU, minutes) or paper (the published setting).")
@click.option("--model", default=None, help=models_help())
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps (overrides the preset).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per step.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Steps between evaluations.")
@click.option("--seed", type=int, default=None,
              help="Seed of the model init, dropout and training data. [default: 0]")
@engine_option("Kernel engine: numba (CPU default), numpy, logspace, cupy, numba-cuda.")
@task_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory. [default: runs/TASK-MODEL]")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out (its own settings).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help=threads_help())
def train(task, preset, model, steps, batch_size, eval_every, seed, engine, out, resume, quiet, threads, **own):
    """Train a task; writes config.json, metrics.jsonl, checkpoint.h5, summary.json and
    learning_curve.png into --out. Ctrl-C stops after the current step with a checkpoint.

    \b
    Examples:
      mincore train --task copy                          # minGRU, default preset, a few minutes
      mincore train --task copy --model minlstm --out runs/lstm
      mincore train --task copy --preset paper --engine cupy
      mincore train --task copy --out runs/lstm --resume # continue after Ctrl-C
      mincore train --task shakespeare --data input.txt  # character-level LM on a local text
      mincore train --task rl --env hopper --kind medium # Decision-minGRU + BC baseline, scored
    """
    from mincore.backend import cpu_count, keep_freed_memory
    from mincore.tasks import get_task
    from mincore.tasks.loop import NonFiniteLoss

    mod = get_task(task)
    if preset not in mod.PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r} for task {task}; expected one of "
                                 f"{', '.join(mod.PRESETS)}", param_hint="--preset")
    if model is not None and model not in mod.MODELS:
        raise click.BadParameter(f"unknown model {model!r} for task {task}; expected one of "
                                 f"{', '.join(mod.MODELS)}", param_hint="--model")
    overrides = task_overrides(mod, task, own)
    out = out or f"runs/{task}-{model or mod.PRESETS[preset].model}"
    if resume:
        cfg = _resumed_config(mod, task, out, [*SETTINGS, *own])
    else:
        cfg = mod.config(preset, model=model, steps=steps, batch_size=batch_size, eval_every=eval_every,
                         seed=seed, engine=engine, **overrides)
        cfg.validate()
    try:
        keep_freed_memory()  # each step's activations reuse freed memory (its docstring)
        with cpu_threads(threads or mod.THREADS or cpu_count()):
            s = mod.train(cfg, out, resume=resume, progress=not quiet)
    except NonFiniteLoss as e:
        raise click.ClickException(str(e)) from None
    if s["status"] == "interrupted":
        click.echo(f"interrupted at step {s['steps']}; checkpoint saved. Continue with:\n"
                   f"  mincore train --task {task} --out {out} --resume", err=True)
        sys.exit(130)
    click.echo(mod.describe(s))
    click.echo(f"files in {out}/: config.json metrics.jsonl checkpoint.h5 summary.json learning_curve.png")


def _resumed_config(mod, task, out, settings):
    """The Config of the run saved in `out`; settings given on the command line are refused."""
    from mincore.autograd import load_checkpoint

    ctx = click.get_current_context()
    given = [f"--{p.replace('_', '-')}" for p in settings
             if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--resume continues the saved run with its own settings; drop "
                               f"{', '.join(given)} (or start a new run with another --out)")
    path = os.path.join(out, "checkpoint.h5")
    if not os.path.exists(path):
        raise click.ClickException(f"--resume: no checkpoint at {path} (start the run without --resume)")
    ck = load_checkpoint(path)
    if ck.config.get("task") != task:
        raise click.ClickException(f"--resume: {path} is a {ck.config.get('task')!r} run, not {task!r}")
    cfg = mod.from_dict(ck.config["config"])
    click.echo(f"resuming {out} at step {ck.step} of {cfg.steps}", err=True)
    return cfg


@contextlib.contextmanager
def cpu_threads(n: int):
    """Limit BLAS (threadpoolctl) and numba's parallel kernels to n threads for the block."""
    import numba
    from threadpoolctl import threadpool_limits

    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(old)


@click.command(name="eval")
@click.option("--checkpoint", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A checkpoint.h5 written by `mincore train`.")
@engine_option("Kernel engine to evaluate with (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def evaluate(path, engine, as_json):
    """Reload a checkpoint and re-evaluate it on its task's held-out set (the run's final
    checkpoint gives the same numbers as its summary.json).

    \b
    Examples:
      mincore eval --checkpoint runs/copy-mingru/checkpoint.h5
      mincore eval --checkpoint runs/copy-mingru/checkpoint.h5 --json
    """
    from mincore.backend import keep_freed_memory
    from mincore.tasks import evaluate_checkpoint

    keep_freed_memory()
    metrics, meta = evaluate_checkpoint(path, engine)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    click.echo(f"{meta['task']} {meta.get('model', '')} at step {meta['step']}: "
               + "  ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
