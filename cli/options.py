"""Options more than one `mincore` command takes, defined once (their checks included)."""

from __future__ import annotations

import contextlib
import os

import click

__all__ = ["check_engine", "engine_option", "TRAIN_OPTIONS", "task_options", "task_overrides", "models_help",
           "threads_help", "FiniteFloat", "not_empty", "SEED", "physical_memory", "check_fits", "gib", "step_bytes",
           "warn_threads", "mpi_options", "ranks_stop_together"]


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
                 "force", "quiet", "threads", "allreduce", "rank_timeout")


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
        kind = (FileOrScheme(opt.schemes) if opt.file else
                click.Choice(opt.choices) if opt.choices else None)
        f = click.option(f"--{field.replace('_', '-')}", field, type=kind, default=None,
                         help="; ".join(f"{name}: {o.help}" for name, o in owners))(f)
    return f


class FileOrScheme(click.Path):
    """An existing file, or a value starting with one of `schemes` (e.g. minari:ID), taken as it is."""

    def __init__(self, schemes=()):
        super().__init__(exists=True, dir_okay=False)
        self.schemes = tuple(schemes)

    def convert(self, value, param, ctx):
        if self.schemes and str(value).startswith(self.schemes):
            return value
        return super().convert(value, param, ctx)


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
    return {k: os.path.abspath(v) if own[k].names_file(v) else v for k, v in given.items() if v is not None}


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
    said = "; ".join(f"{'every free core' if n is None else n} for {_and(names)}" for n, names in by_count.items())
    return (f"CPU threads for BLAS and the numba kernels, at most the CPUs this process may use. [default: the "
            f"task's: {said} (cores the load average leaves free; a note says when that is fewer than all)]")


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and +-inf (a range check alone lets nan through)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        import math

        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


def not_empty(ctx, param, value):
    """Callback refusing an empty string (`--out ''` would otherwise mean the default)."""
    if value is not None and not str(value).strip():
        raise click.BadParameter("expected a path, got an empty string")
    return value


SEED = click.IntRange(min=0)  # numpy seeds are non-negative integers


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def gib(nbytes: int) -> str:
    return f"{nbytes / 2 ** 30:,.1f} GiB"


def check_fits(nbytes: int, option: str, what: str) -> None:
    """A click.BadParameter naming `option` when `nbytes` (a lower bound of what `what` allocates) is
    more than this machine's physical memory: refused at once instead of a MemoryError or the OOM killer."""
    total = physical_memory()
    if total and nbytes > total:
        raise click.BadParameter(f"{what} needs at least {gib(nbytes)}, more than this machine's {gib(total)} "
                                 f"of memory", param_hint=option)


def step_bytes(cfg) -> tuple[int, str]:
    """A lower bound of one training step's memory and its description: the residual stream of one
    micro-batch (sequences x positions x d_model float32), which every block's backward pass keeps.
    Positions: the copy task's seq_len, Shakespeare's context, the rl task's K (one for the BC MLP)."""
    micro = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    positions = (1 if getattr(cfg, "model", None) == "bc" else
                 getattr(cfg, "seq_len", None) or getattr(cfg, "context", None) or getattr(cfg, "K", None) or 1)
    width = getattr(cfg, "d_model", 1)
    return (int(micro) * int(positions) * int(width) * 4,
            f"a training step of {micro} sequences x {positions} positions x width {width}")


def default_threads(task_threads: int | None, ranks_here: int = 1) -> tuple[int, str | None]:
    """The CPU threads a run takes without --threads, and a note to print when the choice needs one.
    `task_threads`: the task's THREADS (None: every core this process's share of the machine has:
    its CPUs over the `ranks_here` ranks on this machine). A single process wanting every core takes
    only the cores the load average leaves free, and says so: on a busy machine a step spread over a
    busy core runs several times slower than on the free ones alone."""
    from mincore.backend import cpu_count, free_cpus

    if task_threads is not None:
        return task_threads, None
    share = max(1, cpu_count() // ranks_here)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this OS: every core
        return share, None
    free = share if ranks_here > 1 else free_cpus(share, load)
    if free == share:
        return share, None
    return free, (f"the machine is busy (load average {load:.1f} on {share} CPUs): training on {free} "
                  f"thread{'s' if free > 1 else ''}; --threads {share} uses every core")


def warn_threads(requested: int | None, option: str = "--threads") -> None:
    """A warning line when `requested` CPU threads are more than this process may use (cpu_threads then
    runs with that many: more threads than CPUs only add switching)."""
    from mincore.backend import cpu_count

    cpus = cpu_count()
    if requested is not None and requested > cpus:
        click.echo(f"Warning: {option} {requested} is more than the {cpus} CPUs this process may use; "
                   f"running with {cpus}", err=True)


def mpi_options(f):
    """`--allreduce` and `--rank-timeout`: how ranks launched by mpiexec / srun sum gradients and how long
    they wait for each other (mincore.autograd.distributed; docs/DISTRIBUTED.md)."""
    f = click.option("--rank-timeout", type=FiniteFloat(min=0, min_open=True), default=None,
                     envvar="MINCORE_RANK_TIMEOUT", show_envvar=True,
                     help="Under MPI: seconds a rank waits for the others before it stops the job (a rank died "
                          "or hangs). [default: 600]")(f)
    return click.option("--allreduce", type=click.Choice(("auto", "mpi", "nccl")), default="auto",
                        envvar="MINCORE_ALLREDUCE", show_envvar=True, show_default=True,
                        help="Under MPI: how gradients are summed over the ranks: auto is MPI for NumPy arrays "
                             "and NCCL for CuPy ones; mpi with CuPy needs a CUDA-aware MPI.")(f)


@contextlib.contextmanager
def ranks_stop_together(ranks, alike: bool = False):
    """Under MPI, an error of the block: one raised on every rank alike (`alike`, or marked so by
    mincore.autograd.distributed) ends each rank with status 1, rank 0 alone printing it; any other is
    printed by its rank, which then stops the whole job (MPI_Abort), since the others would wait for it."""
    if ranks.size == 1:
        yield
        return
    from mincore.autograd.distributed import on_every_rank

    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        if alike or on_every_rank(e):
            if ranks.root:
                raise
            raise SystemExit(1) from None
        click.echo(f"Error: rank {ranks.rank} of {ranks.size}: {type(e).__name__}: {e}; stopping every rank",
                   err=True)
        ranks.abort(1)
