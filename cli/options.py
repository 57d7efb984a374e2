"""Options more than one `mincore` command takes, defined once (their checks included)."""

from __future__ import annotations

import click

__all__ = ["check_engine", "engine_option", "TRAIN_OPTIONS", "task_options", "task_overrides", "models_help",
           "threads_help"]


def check_engine(engine: str | None) -> str | None:
    """`engine` when the engine table knows it and it can run here (None passes: the default engine);
    else a click.BadParameter naming --engine, what it got and what it takes."""
    if engine is None:
        return None
    from mincore.backend import engines

    table = engines()
    if engine not in table:
        raise click.BadParameter(f"unknown engine {engine!r}; expected one of {', '.join(table)}",
                                 param_hint="--engine")
    if not table[engine]["available"]:
        raise click.BadParameter(f"engine {engine!r} cannot run here: {table[engine]['reason']}",
                                 param_hint="--engine")
    return engine


def engine_option(help: str):
    """`--engine NAME`, checked by check_engine while the command line is parsed."""
    return click.option("--engine", default=None, help=help,
                        callback=lambda ctx, param, value: check_engine(value))


# the common options of `mincore train`; a task's own options (its OPTIONS) may not reuse these names
TRAIN_OPTIONS = ("task", "preset", "model", "steps", "batch_size", "eval_every", "seed", "engine", "out", "resume",
                 "quiet", "threads")


def task_options(f):
    """The options every task declares for its own Config fields (mincore.tasks: OPTIONS), each once,
    its help prefixed by the tasks that take it: `--env` sets RLConfig.env."""
    from mincore.tasks import TASKS, get_task

    uses: dict[str, list] = {}
    for name in TASKS:
        for opt in get_task(name).OPTIONS:
            if opt.field in TRAIN_OPTIONS:
                raise ValueError(f"task {name}: option {opt.field!r} is one of mincore train's own options")
            uses.setdefault(opt.field, []).append((name, opt))
    for field, owners in reversed(uses.items()):  # decorators apply bottom-up: keep the declared order
        opt = owners[0][1]
        kind = (click.Path(exists=True, dir_okay=False) if opt.file else
                click.Choice(opt.choices) if opt.choices else None)
        f = click.option(f"--{field.replace('_', '-')}", field, type=kind, default=None,
                         help="; ".join(f"{name}: {o.help}" for name, o in owners))(f)
    return f


def task_overrides(mod, task: str, given: dict) -> dict:
    """The Config fields set by task options on the command line (files made absolute); a
    click.BadParameter for an option `task` does not take."""
    import os

    own = {o.field: o for o in mod.OPTIONS}
    foreign = [k for k, v in given.items() if v is not None and k not in own]
    if foreign:
        from mincore.tasks import TASKS, get_task

        flags = "/".join(f"--{k.replace('_', '-')}" for k in foreign)
        owners = sorted({t for t in TASKS for k in foreign if k in {o.field for o in get_task(t).OPTIONS}})
        raise click.BadParameter(f"{flags} {'is an option' if len(foreign) == 1 else 'are options'} of --task "
                                 f"{' / '.join(owners)}, not {task}", param_hint=f"--{foreign[0].replace('_', '-')}")
    return {k: os.path.abspath(v) if own[k].file else v for k, v in given.items() if v is not None}


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def models_help() -> str:
    """--model's help from the tasks' MODELS: the models every task has, then each task's extras."""
    from mincore.tasks import TASKS, get_task

    models = {name: get_task(name).MODELS for name in TASKS}
    common = [m for m in next(iter(models.values())) if all(m in ms for ms in models.values())]
    extra = "".join(f" ({name}: also {_and(m for m in ms if m not in common)})" for name, ms in models.items()
                    if set(ms) - set(common))
    return f"Recurrent cell: {' or '.join(common)}{extra}. [default: {common[0]}]"


def threads_help() -> str:
    """--threads' help from the tasks' THREADS (None: every core)."""
    from mincore.tasks import TASKS, get_task

    by_count: dict = {}
    for name in TASKS:
        by_count.setdefault(get_task(name).THREADS, []).append(name)
    said = "; ".join(f"{'all cores' if n is None else n} for {_and(names)}" for n, names in by_count.items())
    return f"CPU threads for BLAS and the numba kernels. [default: the task's: {said}]"
