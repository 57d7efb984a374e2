"""The `mincore` command. Thin by design: each command parses options, imports what it needs inside
the function (so `mincore --help` stays instant) and calls the library.

Each cli module defines its commands as plain click commands (it never imports this module); the
group `main` lists them in COMMANDS and imports a module the first time one of its commands is
needed. This module holds the group, `--version` and `info`; options shared by several commands
live in cli/options.py.
"""

from __future__ import annotations

import importlib

import click

from mincore import __version__

# command name -> "module:attribute" of the click command (or group) that implements it
COMMANDS = {
    "bench": "mincore.cli.bench:bench",
    "eval": "mincore.cli.train:evaluate",
    "generate": "mincore.cli.generate:generate",
    "listops": "mincore.cli.listops:listops",
    "rl": "mincore.cli.rl:rl",
    "train": "mincore.cli.train:train",
}


class _Group(click.Group):
    """A click group that imports its commands on first use (click's lazy-group recipe: COMMANDS)
    and turns library errors into one-line messages and a non-zero exit."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kw):
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, attr = self.lazy[name].split(":")
        return getattr(importlib.import_module(module), attr)

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
        except MemoryError as e:
            raise click.ClickException(_out_of_memory(e)) from None
        except ModuleNotFoundError as e:  # an optional dependency (the extras in pyproject.toml)
            raise click.ClickException(_missing_module(e)) from None
        except (ValueError, TypeError, RuntimeError, FileNotFoundError, OSError) as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None


# top-level module -> what to install or use instead (pyproject.toml's extras)
_EXTRAS = {
    "cupy": "the GPU engines need it: pip install 'mincore[cuda12]' (or 'mincore[cuda13]'), or run on the CPU "
            "with --engine numba",
    "numba_cuda": "the numba-cuda engine needs it: pip install 'mincore[cuda12]' (or 'mincore[cuda13]'), or run "
                  "on the CPU with --engine numba",
    "gymnasium": "the rl task and `mincore rl collect` need it: pip install 'mincore[rl]'",
    "mujoco": "the rl task and `mincore rl collect` need it: pip install 'mincore[rl]'",
    "torch": "the PyTorch baselines need it: install torch, or pass --no-torch",
}


def _missing_module(e: ModuleNotFoundError) -> str:
    name = (e.name or "").split(".")[0]
    hint = _EXTRAS.get(name, "a dependency of mincore is missing: reinstall mincore (pip install mincore)")
    return f"module {name or e} is not installed; {hint}"


def _out_of_memory(e: MemoryError) -> str:
    from .options import gib, physical_memory

    total = physical_memory()
    room = f"this machine's {gib(total)} of memory" if total else "this machine's memory"
    return (f"out of memory: {str(e) or 'an allocation failed'}; it does not fit in {room}: ask for less "
            f"(a smaller --batch-size, --shape or model)")


@click.group(cls=_Group, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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

    from mincore.backend import cpu_count, engines

    versions = {"mincore": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    dists = metadata.packages_distributions()  # import name -> distributions (cupy ships as cupy-cuda12x...)
    for mod in ("numba", "scipy", "h5py", "click", "tqdm", "matplotlib", "cupy", "torch"):
        versions[mod] = metadata.version(dists[mod][0]) if dists.get(mod) else "not installed"
    click.echo(f"machine: {platform.machine()} {platform.system()} ({cpu_count()} CPUs)")
    for k, v in versions.items():
        click.echo(f"{k:>11}: {v}")
    click.echo("engines:")
    for name, e in engines().items():
        state = "available" if e["available"] else f"unavailable: {e['reason']}"
        click.echo(f"  {name:<11} [{', '.join(e['arrays'])}] {state}")
        click.echo(f"  {'':<11} {e['doc']}")
