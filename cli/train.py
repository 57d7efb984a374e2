"""`mincore train` and `mincore eval`: build a task Config, call the shared loop, report the files."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from .options import engine_option

TASKS = ("copy", "shakespeare", "rl")  # mincore.tasks.TASKS; listed here too so `--help` needs no imports


def _minutes(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


@click.command()
@click.option("--task", type=click.Choice(TASKS), default="copy", show_default=True,
              help="Which task to train.")
@click.option("--preset", default="default", show_default=True,
              help="Named settings: default (2-core CPU, minutes) or paper (the published setting).")
@click.option("--model", default=None,
              help="Recurrent cell: mingru or minlstm (rl: also bc, the MLP baseline). [default: mingru]")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps (overrides the preset).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Sequences per step.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Steps between evaluations.")
@click.option("--seed", type=int, default=None,
              help="Seed of the model init, dropout and training data. [default: 0]")
@engine_option("Kernel engine: numba (CPU default), numpy, logspace, cupy, numba-cuda.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="shakespeare: a UTF-8 text file [default: tiny-shakespeare, downloaded once].")
@click.option("--env", type=click.Choice(("halfcheetah", "hopper", "walker2d")), default=None,
              help="rl: MuJoCo environment. [default: halfcheetah]")
@click.option("--kind", type=click.Choice(("random", "medium", "medium-replay", "medium-expert")), default=None,
              help="rl: dataset kind to collect when no --dataset is given. [default: medium-replay]")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False), default=None,
              help="rl: a D4RL-layout HDF5 file [default: collect one with `mincore rl collect`, cached].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory. [default: runs/TASK-MODEL]")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out (its own settings).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for BLAS and the numba kernels. [default: the task's: 1 for copy and rl, whose "
                   "small models train faster on one thread; all cores for shakespeare]")
def train(task, preset, model, steps, batch_size, eval_every, seed, engine, data, env, kind, dataset, out, resume,
          quiet, threads):
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
    from mincore.autograd import load_checkpoint
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
    if data is not None and not hasattr(mod.PRESETS[preset], "data"):
        raise click.BadParameter(f"task {task} reads no text file (only shakespeare does)", param_hint="--data")
    rl = {"env": env, "kind": kind, "dataset": os.path.abspath(dataset) if dataset else None}
    if task != "rl" and any(v is not None for v in rl.values()):
        raise click.BadParameter(f"--env/--kind/--dataset are options of --task rl, not {task}", param_hint="--env")
    out = out or f"runs/{task}-{model or mod.PRESETS[preset].model}"
    if resume:
        ctx = click.get_current_context()
        given = [f"--{p.replace('_', '-')}" for p in ("preset", "model", "steps", "batch_size", "eval_every",
                                                     "seed", "engine", "data", "env", "kind", "dataset")
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
    else:
        cfg = mod.config(preset, model=model, steps=steps, batch_size=batch_size, eval_every=eval_every,
                         seed=seed, engine=engine, **({"data": os.path.abspath(data)} if data else {}),
                         **(rl if task == "rl" else {}))
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
    metric = "accuracy" if "accuracy" in s else "loss"
    click.echo(f"{task} {cfg.model}: held-out {metric} {s[metric]:.4f} (loss {s['loss']:.4f}) after "
               f"{s['steps']} steps in {_minutes(s['wall_seconds'])} [{s['status']}]")
    if "normalized_score" in s:  # rl: simulator scores beside the baseline and the data
        click.echo(f"normalised score {s['normalized_score']:.1f} +- {s['normalized_stderr']:.1f} (return "
                   f"{s['mean_return']:.0f}, {s['episodes']} episodes); BC {s['bc_normalized_score']:.1f}; dataset "
                   f"mean return {s['dataset_mean_return']:.0f}, best {s['dataset_best_return']:.0f}")
    click.echo(f"files in {out}/: config.json metrics.jsonl checkpoint.h5 summary.json learning_curve.png")


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
