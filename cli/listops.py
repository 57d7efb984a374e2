"""`mincore listops generate`: ListOps data in the Long Range Arena's files, from a seed."""

from __future__ import annotations

import click

from .options import SEED, not_empty


@click.group()
def listops():
    """ListOps (Long Range Arena) data for `mincore train --task listops`.

    \b
    Example:
      mincore listops generate --out data/listops
    """


@listops.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), callback=not_empty,
              help="Folder to write basic_train.tsv, basic_val.tsv and basic_test.tsv into (created).")
@click.option("--train", type=click.IntRange(min=0), default=96_000, show_default=True, help="Training examples.")
@click.option("--val", type=click.IntRange(min=0), default=2_000, show_default=True, help="Validation examples.")
@click.option("--test", type=click.IntRange(min=0), default=2_000, show_default=True, help="Test examples.")
@click.option("--min-length", type=click.IntRange(min=0), default=500, show_default=True,
              help="Keep expressions longer than this (values + 2 per operator).")
@click.option("--max-length", type=click.IntRange(min=2), default=2_000, show_default=True,
              help="Keep expressions shorter than this.")
@click.option("--max-depth", type=click.IntRange(min=2), default=10, show_default=True,
              help="Nesting depth at which every node is a value.")
@click.option("--max-args", type=click.IntRange(min=2), default=10, show_default=True,
              help="Most arguments of an operator (at least 2).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed (same seed and settings, same files).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(out, train, val, test, min_length, max_length, max_depth, max_args, seed, quiet):
    """Generate ListOps expressions with the Long Range Arena's rules (MIN, MAX, MED, SM over values
    0-9, nested; every expression distinct) into the LRA's tab-separated files with its parentheses.
    The defaults are the LRA's; the files train with `mincore train --task listops --data-dir DIR`.

    \b
    Examples:
      mincore listops generate --out data/listops
      mincore listops generate --out data/small --train 2000 --val 100 --test 100 --min-length 20 --max-length 100
    """
    from mincore.tasks.listops_data import generate as write

    if not min_length < max_length - 1:
        raise click.BadParameter(f"--min-length {min_length} leaves no length below --max-length {max_length} "
                                 f"(kept: min < length < max)", param_hint="--min-length")
    paths = write(out, train=train, val=val, test=test, min_length=min_length, max_length=max_length,
                  max_depth=max_depth, max_args=max_args, seed=seed, progress=not quiet)
    for split, path in paths.items():
        click.echo(f"{split:>5}: {path}")
