"""`mincore rl ...`: offline-RL data (collection with gymnasium MuJoCo, inspection of D4RL files)."""

from __future__ import annotations

import click

from mincore.tasks.rl.collect import ENVS, KINDS

from .options import SEED, not_empty


@click.group()
def rl():
    """Offline-RL datasets in the D4RL layout.

    \b
    Examples:
      mincore rl collect --env hopper --kind medium --out hopper-medium.h5
      mincore rl info hopper-medium.h5
    """


@rl.command()
@click.option("--env", type=click.Choice(tuple(ENVS)), required=True, help="MuJoCo v5 environment.")
@click.option("--kind", type=click.Choice(KINDS), required=True,
              help="random | medium | medium-replay | medium-expert (D4RL's kinds; see docs/RL.md).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, callback=not_empty,
              help="HDF5 file to write [default: the rl/ folder of the cache: $MINCORE_CACHE, else "
                   "$XDG_CACHE_HOME/mincore or ~/.cache/mincore].")
@click.option("--seed", type=SEED, default=0, show_default=True, help="ARS, resets and action noise.")
@click.option("--ars-iterations", type=click.IntRange(min=1), default=None,
              help="ARS training iterations of the behaviour policy. [default: 60]")
@click.option("--transitions", type=click.IntRange(min=1), default=None,
              help="Transitions for random / medium (each half of medium-expert). [default: 100000]")
@click.option("--horizon", type=click.IntRange(min=1), default=None, help="Episode time limit. [default: 1000]")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def collect(env, kind, out, seed, ars_iterations, transitions, horizon, quiet):
    """Collect a D4RL-layout dataset (observations, actions, rewards, terminals, timeouts, plus
    attributes saying how it was made). Reuses `--out` when it holds the same settings.
    Needs `pip install 'mincore[rl]'`."""
    import dataclasses

    from mincore.tasks.rl import collect as rl_collect

    over = {"ars_iterations": ars_iterations, "transitions": transitions, "horizon": horizon}
    cfg = dataclasses.replace(rl_collect.CollectConfig(env=env, kind=kind, seed=seed),
                              **{k: v for k, v in over.items() if v is not None})
    path = rl_collect.collect(cfg, out, progress=not quiet)
    _describe(path, _load(path))


@rl.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def info(path):
    """Episodes, returns and attributes of a D4RL-layout file (refuses malformed ones)."""
    _describe(path, _load(path))


def _load(path):
    """The file's Dataset; h5py's KeyError for a link to an object the file does not hold (a dangling
    link) becomes one line naming the file."""
    from mincore.tasks.rl import data as rl_data

    try:
        return rl_data.load(path)
    except KeyError as e:
        raise click.ClickException(f"{path}: the file links to an object it does not hold "
                                   f"({e.args[0] if e.args else e}); damaged, or not in the D4RL layout") from None


def _describe(path, ds):
    s = ds.summary()
    click.echo(f"{path}: {s['transitions']} transitions, {s['episodes']} episodes (mean length "
               f"{s['mean_length']:.0f}); return mean {s['mean_return']:.1f}, best {s['best_return']:.1f}")
    env = ds.attrs.get("env")
    from mincore.tasks.rl.data import REF_MIN_MAX, normalized_score

    if env in REF_MIN_MAX:  # the D4RL reference returns exist for these environments only

        click.echo(f"D4RL-normalised mean return: {float(normalized_score(env, s['mean_return'])):.1f} ({env})")
    for k in ("env_id", "kind", "how", "medium_eval_return", "best_eval_return"):
        if k in ds.attrs:
            click.echo(f"  {k}: {ds.attrs[k]}")
