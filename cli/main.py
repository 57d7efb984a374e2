"""The `mincore` command. Thin by design: each command parses options, imports what it needs inside
the function (so `mincore --help` stays instant) and calls the library.

Commands register themselves on the group `main`: this module holds `info` and `--version`;
cli/bench.py holds `bench`; cli/train.py holds `train` and `eval` (and later tasks add theirs).
"""

from __future__ import annotations

import click

from mincore import __version__


class _Group(click.Group):
    """A click group that turns library errors into one-line messages and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own control flow (--help raises Exit, a RuntimeError)
        except BrokenPipeError:  # `mincore info | head`: the reader left; stop quietly (Python docs' recipe)
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (ValueError, TypeError, RuntimeError, FileNotFoundError, OSError) as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mincore")
def main():
    """mincore: minGRU / minLSTM / LRU with hand-written parallel-scan kernels.

    \b
    Examples:
      mincore info                      # versions and which engines can run here
      mincore train --task copy         # the selective-copying task, default preset
      mincore bench kernels --quick     # kernel bandwidth against this machine's copy bandwidth
    """


@main.command()
def info():
    """Installed versions, and each engine: can it run here, and if not, why.

    \b
    Example:
      mincore info
    """
    import platform
    from importlib import metadata

    import numpy

    from mincore.backend import engines

    versions = {"mincore": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    dists = metadata.packages_distributions()  # import name -> distributions (cupy ships as cupy-cuda12x...)
    for mod in ("numba", "scipy", "h5py", "click", "tqdm", "matplotlib", "cupy", "torch"):
        versions[mod] = metadata.version(dists[mod][0]) if dists.get(mod) else "not installed"
    click.echo(f"machine: {platform.machine()} {platform.system()} ({_cpu_count()} CPUs)")
    for k, v in versions.items():
        click.echo(f"{k:>11}: {v}")
    click.echo("engines:")
    for name, e in engines().items():
        state = "available" if e["available"] else f"unavailable: {e['reason']}"
        click.echo(f"  {name:<11} [{', '.join(e['arrays'])}] {state}")
        click.echo(f"  {'':<11} {e['doc']}")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# imported for their side effect of adding commands to `main` (after `main` exists)
from . import bench  # noqa: E402, F401
from . import generate as _generate  # noqa: E402, F401
from . import rl as _rl  # noqa: E402, F401
from . import train as _train  # noqa: E402, F401
