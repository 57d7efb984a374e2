"""Options more than one `mincore` command takes, defined once (their checks included)."""

from __future__ import annotations

import click

__all__ = ["check_engine", "engine_option"]


def check_engine(engine: str | None) -> str | None:
    """`engine` when the engine table knows it and it can run here (None passes: the default engine);
    else a click.BadParameter naming --engine, what it got and what would do."""
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
