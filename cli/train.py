"""`mincore train` and `mincore eval`: build a task Config, call the shared loop, report the files."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import click

from mincore.backend import cpu_threads
from mincore.tasks import TASKS

from .options import (
    SEED,
    FileOrScheme,
    check_fits,
    default_threads,
    engine_option,
    models_help,
    mpi_options,
    not_empty,
    ranks_stop_together,
    step_bytes,
    task_options,
    task_overrides,
    threads_help,
    warn_threads,
)

# the settings a resumed run takes from its checkpoint (with the task's own options): never given again
SETTINGS = ("preset", "model", "steps", "batch_size", "eval_every", "seed", "engine")


@click.command()
@click.option("--task", type=click.Choice(tuple(TASKS)), default="copy", show_default=True,
              help="Which task to train.")
@click.option("--preset", default="default", show_default=True,
              help="Named settings: default (2-core CPU, minutes) or paper (the published setting).")
@click.option("--model", default=None, help=models_help())
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps (overrides the preset). With --resume: extend the saved run to this "
                   "many steps (its learning rate then follows the schedule of a run this long).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per step.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Steps between evaluations.")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the model init, dropout and training data. [default: 0]")
@engine_option("Kernel engine: numba (CPU default), numpy, logspace, cupy, numba-cuda.")
@task_options
@click.option("--out", type=click.Path(file_okay=False), default=None, callback=not_empty,
              help="Run directory. [default: runs/TASK-MODEL]")
@click.option("--resume", is_flag=True,
              help="Continue the run saved in --out (its own settings; --data may point at its moved text).")
@click.option("--force", is_flag=True, help="Replace the run saved in --out (its files are removed).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help=threads_help())
@mpi_options
def train(task, preset, model, steps, batch_size, eval_every, seed, engine, out, resume, force, quiet, threads,
          allreduce, rank_timeout, **own):
    """Train a task; writes config.json, metrics.jsonl, checkpoint.h5, summary.json and
    learning_curve.png into --out. Ctrl-C stops after the current step with a checkpoint.
    Under mpiexec / srun every rank trains on its share of each batch (data parallel).

    \b
    Examples:
      mincore train --task copy                          # minGRU, default preset, a few minutes
      mincore train --task copy --model minlstm --out runs/lstm
      mincore train --task copy --preset paper --engine cupy
      mincore train --task copy --out runs/lstm --resume # continue after Ctrl-C
      mincore train --task copy --out runs/lstm --resume --steps 8000  # extend a run to 8000 steps
      mincore train --task copy --out runs/lstm --force  # start again in a folder holding a run
      mincore train --task shakespeare --data input.txt  # character-level LM on a local text
      mincore train --task rl --env hopper --kind medium # Decision-minGRU + BC baseline, scored
      mpiexec -n 2 mincore train --task copy             # two ranks, the same --batch-size in all
    """
    from mincore.autograd.distributed import world
    from mincore.backend import engine_arrays, keep_freed_memory
    from mincore.tasks.loop import NonFiniteLoss

    ranks = world(allreduce=allreduce, timeout=rank_timeout)  # MPI's when launched by mpiexec / srun
    say = click.echo if ranks.root else (lambda *a, **k: None)  # rank 0 alone prints
    with ranks_stop_together(ranks, alike=True):  # the command line is checked alike on every rank
        mod, cfg, out = _config(task, preset, model, steps, batch_size, eval_every, seed, engine, out, resume, force,
                                own, ranks)
    if ranks.root:
        warn_threads(threads)
        if preset == "paper" and not resume and engine_arrays(cfg.engine) == "numpy":
            say(f"Note: the paper preset is the published GPU setting ({cfg.steps:,} steps of batch "
                f"{cfg.batch_size}); on this CPU it runs, but may take days (the progress bar's ETA after a few "
                f"steps tells). On a GPU: --engine cupy; on a CPU in minutes: --preset default.", err=True)
    try:
        keep_freed_memory()  # each step's activations reuse freed memory (its docstring)
        # ranks on one machine share its cores: each takes its part unless --threads says otherwise
        n_threads, note = (threads, None) if threads else default_threads(mod.THREADS, ranks.local_size)
        if note:
            say(f"Note: {note}", err=True)
        with cpu_threads(n_threads), \
                ranks_stop_together(ranks):
            s = mod.train(cfg, out, resume=resume, force=force, progress=not quiet)
    except NonFiniteLoss as e:
        raise click.ClickException(str(e)) from None
    if s["status"] == "interrupted":
        launch = f"mpiexec -n {ranks.size} " if ranks.size > 1 else ""
        say(f"interrupted at step {s['steps']}; checkpoint saved. Continue with:\n"
            f"  {launch}mincore train --task {task} --out {out} --resume", err=True)
        sys.exit(130)
    say(mod.describe(s))
    say(f"files in {out}/: config.json metrics.jsonl checkpoint.h5 summary.json learning_curve.png")


def _config(task, preset, model, steps, batch_size, eval_every, seed, engine, out, resume, force, own, ranks):
    """(task module, Config, run folder) from the command line; a resumed run's from its checkpoint."""
    from mincore.tasks import get_task

    mod = get_task(task)
    if preset not in mod.PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r} for task {task}; expected one of "
                                 f"{', '.join(mod.PRESETS)}", param_hint="--preset")
    if model is not None and model not in mod.MODELS:
        raise click.BadParameter(f"unknown model {model!r} for task {task}; expected one of "
                                 f"{', '.join(mod.MODELS)}", param_hint="--model")
    if resume and force:
        raise click.UsageError("--resume continues the run in --out and --force replaces it: give one of them")
    overrides = task_overrides(mod, task, own)
    out = out or f"runs/{task}-{model or mod.PRESETS[preset].model}"
    if resume:
        cfg = ranks.on_root(lambda: _resumed_config(mod, task, out, overrides, steps))  # rank 0 reads the folder
    else:
        cfg = mod.config(preset, model=model, steps=steps, batch_size=batch_size, eval_every=eval_every,
                         seed=seed, engine=engine, **overrides)
        cfg.validate()
    nbytes, what = step_bytes(cfg)
    check_fits(nbytes, "the run's batch_size" if resume else "--batch-size", what)
    return mod, cfg, out


def _resumed_config(mod, task, out, overrides, steps=None):
    """The Config of the run saved in `out`, checked before any training: its task, its settings, its
    training-loop state, its engine and its data. Settings given on the command line are refused, but
    for the data file of a task that verifies it (verify_data): the same data, moved; and `steps`, which
    extends the run (at least its saved step; the learning rate follows warmup + cosine over the new
    total from the saved step on, as in a run started with that many steps)."""
    from mincore.autograd import load_checkpoint
    from mincore.tasks import check_saved_data, check_saved_engine, data_field, saved_config

    movable = data_field(mod) if hasattr(mod, "verify_data") else None
    ctx = click.get_current_context()
    given = [f"--{p.replace('_', '-')}" for p in (*SETTINGS, *(o.field for o in mod.OPTIONS))
             if p not in (movable, "steps") and ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--resume continues the saved run with its own settings; drop "
                               f"{', '.join(given)} (or start a new run with another --out)")
    path = os.path.join(out, "checkpoint.h5")
    if not os.path.exists(path):
        raise click.ClickException(f"--resume: no checkpoint at {path} (start the run without --resume)")
    ck = load_checkpoint(path)
    try:
        _, cfg = saved_config(ck.config, path, task=task)
        _check_loop_state(ck.config.get("loop"), path)
        if movable in overrides:
            cfg = dataclasses.replace(cfg, **{movable: overrides[movable]})
        check_saved_engine(cfg.engine, path, "resume it where that engine runs, or evaluate it here with "
                                             "`mincore eval --engine numba`")
        move = ", point at a copy of it with --data PATH" if movable else ""
        check_saved_data(mod, ck.config, cfg, path, f"restore the run's data{move}, or start a new run with "
                                                    f"another --out")
    except ValueError as e:
        raise click.ClickException(f"--resume: {e}") from None
    if steps is None or steps == cfg.steps:
        click.echo(f"resuming {out} at step {ck.step} of {cfg.steps}", err=True)
        return cfg
    if steps < ck.step:
        raise click.BadParameter(f"the saved run is at step {ck.step}; --steps {steps} would end it before "
                                 f"that (give at least {ck.step}, or start a new run with another --out)",
                                 param_hint="--steps")
    click.echo(f"resuming {out} at step {ck.step}, extended from {cfg.steps} to {steps} steps (the learning "
               f"rate follows the warmup + cosine schedule of a {steps}-step run from here)", err=True)
    return dataclasses.replace(cfg, steps=steps)


def _check_loop_state(loop, path):
    """Refuse a checkpoint whose training-loop state (config key "loop", written by tasks/loop.py) cannot
    be restored: a ValueError naming `path` and the entry, before the loop reads it."""
    import math
    import numbers

    import numpy as np

    if not isinstance(loop, dict):
        raise ValueError(f"{path}: the checkpoint has no training-loop state ('loop' is {type(loop).__name__}, "
                         f"expected an object); it can be evaluated (mincore eval) but not resumed")
    missing = [k for k in ("rngs", "wall_seconds", "best", "bad_evals") if k not in loop]
    if missing:
        raise ValueError(f"{path}: the training-loop state lacks {', '.join(missing)}; it can be evaluated "
                         f"(mincore eval) but not resumed")
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {"wall_seconds": real(loop["wall_seconds"]) and loop["wall_seconds"] >= 0,
              "best": loop["best"] is None or real(loop["best"]),
              "bad_evals": isinstance(loop["bad_evals"], int) and not isinstance(loop["bad_evals"], bool)
              and loop["bad_evals"] >= 0,
              "rngs": isinstance(loop["rngs"], list)}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"{path}: the training-loop state has an invalid {bad[0]} ({loop[bad[0]]!r})")
    for i, state in enumerate(loop["rngs"]):
        name = state.get("bit_generator") if isinstance(state, dict) else None
        cls = getattr(np.random, name, None) if isinstance(name, str) else None
        try:
            if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
                raise ValueError(f"bit_generator is {name!r}, expected one of NumPy's")
            cls().state = state  # the loop restores the same dict into a dropout Generator
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{path}: random state {i} of the training-loop state cannot be restored "
                             f"({type(e).__name__}: {e})") from None


@click.command(name="eval")
@click.option("--checkpoint", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A checkpoint.h5 written by `mincore train`.")
@engine_option("Kernel engine to evaluate with (default: the run's).")
@click.option("--data", type=FileOrScheme(("minari:",)), default=None,
              help="The data file the run read (shakespeare: its text; rl: its dataset file or minari:ID), "
                   "where it is now; "
                   "Shakespeare's text must be the text it was trained on. [default: the run's path]")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def evaluate(path, engine, data, as_json):
    """Reload a checkpoint and re-evaluate it on its task's held-out set (the run's final
    checkpoint gives the same numbers as its summary.json).

    \b
    Examples:
      mincore eval --checkpoint runs/copy-mingru/checkpoint.h5
      mincore eval --checkpoint runs/copy-mingru/checkpoint.h5 --json
      mincore eval --checkpoint runs/shakespeare-mingru/checkpoint.h5 --data moved/input.txt
    """
    from mincore.backend import keep_freed_memory
    from mincore.tasks import evaluate_checkpoint

    keep_freed_memory()
    metrics, meta = evaluate_checkpoint(path, engine, data)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    click.echo(f"{meta['task']} {meta.get('model', '')} at step {meta['step']}: "
               + "  ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
