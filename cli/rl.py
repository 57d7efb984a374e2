"""`mincore rl ...`: offline-RL data (collection with gymnasium MuJoCo, D4RL files and Minari datasets)
and the results table of the Decision-minRNNs beside their baselines."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mincore.tasks.rl.collect import ENVS, KINDS

from .options import SEED, not_empty, warn_threads


@click.group()
def rl():
    """Offline-RL datasets (D4RL layout, Minari), the results table, and scoring a trained run again.

    \b
    Examples:
      mincore rl collect --env hopper --kind medium --out hopper-medium.h5
      mincore rl collect --env hopper --kind medium --format minari   # also minari:mincore/hopper/medium-v0
      mincore rl info hopper-medium.h5
      mincore rl info minari:mujoco/hopper/medium-v0
      mincore rl table --envs halfcheetah --seeds 3
      mincore rl score --checkpoint runs/rl-mingru/checkpoint.h5 --target-return 2000,4000
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
              help="At most this many ARS iterations to reach the medium level (a cached run continues). "
                   "[default: 1000]")
@click.option("--medium-level", type=float, default=None,
              help="D4RL-normalised noise-free evaluation return of the medium policy. [default: D4RL's "
                   "medium datasets: 40.7 halfcheetah, 44.3 hopper, 62.1 walker2d]")
@click.option("--expert-iterations", type=click.IntRange(min=1), default=None,
              help="medium-expert: ARS iterations past the medium policy; the expert is the best of them. "
                   "[default: 100]")
@click.option("--action-noise", type=click.FloatRange(min=0), default=None,
              help="Std of the Gaussian noise on behaviour actions (medium, expert). [default: 0.05]")
@click.option("--transitions", type=click.IntRange(min=1), default=None,
              help="Transitions for random / medium (each half of medium-expert). [default: 100000]")
@click.option("--horizon", type=click.IntRange(min=1), default=None, help="Episode time limit. [default: 1000]")
@click.option("--format", "fmt", type=click.Choice(("d4rl", "minari")), default="d4rl", show_default=True,
              help="minari: write the dataset also as a Minari dataset in the local Minari storage "
                   "($MINARI_DATASETS_PATH, else ~/.minari/datasets), beside the D4RL-layout file.")
@click.option("--dataset-id", default=None, callback=not_empty,
              help="The Minari dataset's ID (with --format minari). [default: mincore/ENV/KIND-v0]")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def collect(env, kind, out, seed, ars_iterations, medium_level, expert_iterations, action_noise, transitions,
            horizon, fmt, dataset_id, quiet):
    """Collect a D4RL-layout dataset (observations, actions, rewards, terminals, timeouts, plus
    attributes saying how it was made). Reuses `--out` when it holds the same settings; with
    --format minari, also a Minari dataset (kept when its ID holds this data, refused when it holds
    other data). Needs `pip install 'mincore[rl]'`."""
    import dataclasses

    from mincore.tasks.rl import collect as rl_collect

    over = {"ars_iterations": ars_iterations, "medium_level": medium_level, "expert_iterations": expert_iterations,
            "action_noise": action_noise, "transitions": transitions, "horizon": horizon}
    cfg = dataclasses.replace(rl_collect.CollectConfig(env=env, kind=kind, seed=seed),
                              **{k: v for k, v in over.items() if v is not None})
    if dataset_id is not None and fmt != "minari":
        raise click.UsageError("--dataset-id names the Minari dataset of --format minari; add --format minari")
    path = rl_collect.collect(cfg, out, progress=not quiet)
    _describe(path, _load(path))
    if fmt == "minari":
        from mincore.tasks.rl import minari_io

        ds_id = minari_io.write(path, dataset_id or f"mincore/{env}/{kind}-v0")
        click.echo(f"Minari dataset minari:{ds_id} in {minari_io.root()} (minari.load_dataset({ds_id!r}); "
                   f"mincore: --dataset minari:{ds_id})")


@rl.command()
@click.argument("dataset")
def info(dataset):
    """Episodes, returns and attributes of a D4RL-layout file, or of a local Minari dataset given as
    minari:ID (refuses malformed ones)."""
    _describe(dataset, _load(dataset))


def _load(path):
    """The file's (or Minari dataset's) Dataset; h5py's KeyError for a link to an object the file does
    not hold (a dangling link) becomes one line naming the file."""
    from mincore.tasks.rl import data as rl_data

    try:
        return rl_data.read(path)
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
    for k in ("env_id", "minari_id", "kind", "how", "medium_iteration", "medium_eval_return",
              "medium_eval_normalized", "best_iteration", "best_eval_return", "expert_level"):
        if k in ds.attrs:
            click.echo(f"  {k}: {ds.attrs[k]}")


def _names(allowed):
    """Callback: a comma-separated list of distinct names from `allowed`, as a tuple."""
    def parse(ctx, param, value):
        if value is None:
            return None
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        wrong = [n for n in names if n not in allowed]
        if wrong or not names or len(set(names)) != len(names):
            raise click.BadParameter(f"got {value!r}; expected comma-separated names from {', '.join(allowed)}")
        return names
    return parse


@rl.command()
@click.option("--envs", default="halfcheetah", show_default=True, callback=_names(tuple(ENVS)),
              help="Environments, comma-separated.")
@click.option("--kinds", default="medium,medium-replay,medium-expert", show_default=True,
              callback=_names(KINDS), help="Dataset kinds, comma-separated (collected once each, cached).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training seeds per model and dataset (0 .. N-1).")
@click.option("--models", default="mingru,minlstm", show_default=True, callback=_names(("mingru", "minlstm")),
              help="Decision-minRNN cells, comma-separated.")
@click.option("--baselines", default="bc,pbc", show_default=True, callback=_names(("bc", "pbc", "none")),
              help="MLP baselines, comma-separated: bc, pbc (%BC); 'none' for neither.")
@click.option("--dataset", default=None, callback=not_empty,
              help="One D4RL-layout file or minari:ID as the only dataset (one --envs) instead of collecting.")
@click.option("--preset", default="default", show_default=True, help="The rl task's preset for every run.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps of every run, baselines included [default: the preset's].")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Evaluation episodes per run [default: the preset's].")
@click.option("--horizon", type=click.IntRange(min=1), default=None,
              help="Episode time limit in collection and evaluation. [default: 1000]")
@click.option("--collect-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="ARS seed of the collected datasets (as `mincore rl collect --seed`); rows of another seed "
                   "say so.")
@click.option("--medium-level", type=float, default=None,
              help="Medium level of the collection, D4RL-normalised (as `mincore rl collect --medium-level`; one "
                   "--envs); the rows say so. [default: D4RL's]")
@click.option("--out", type=click.Path(file_okay=False), default="runs/rl-table", show_default=True,
              callback=not_empty, help="Folder of the runs (one per dataset, model and seed) and the table.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs trained at once, each in its own process on one thread (a line as each ends, no "
                   "progress bars); at most the CPUs this process may use.")
@click.option("--quiet", is_flag=True, help="No progress bars (one line per run still).")
def table(envs, kinds, seeds, models, baselines, dataset, preset, steps, episodes, horizon, collect_seed,
          medium_level, out, jobs, quiet):
    """Score Decision-minGRU, Decision-minLSTM, BC and %BC on each dataset and write the results
    table: OUT/table.md, table.json and a bar plot table.png (D4RL-normalised mean +- standard
    error over seeds, or over evaluation episodes with one seed). Runs already in OUT with the same
    settings are read, not run again; after Ctrl-C the same command continues the interrupted run
    from its checkpoint. Needs `pip install 'mincore[rl]'`.

    \b
    Examples:
      mincore rl table --envs halfcheetah --seeds 3
      mincore rl table --envs hopper,walker2d --kinds medium --seeds 1 --out runs/table-hw
      mincore rl table --envs halfcheetah --seeds 3 --jobs 2      # two runs at a time
    """
    from mincore.backend import cpu_count, cpu_threads, keep_freed_memory
    from mincore.tasks.rl import task as rl_task
    from mincore.tasks.rl.table import TableConfig, TableInterrupted, run

    if preset not in rl_task.PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r}; expected one of {', '.join(rl_task.PRESETS)}",
                                 param_hint="--preset")
    base = tuple(b for b in baselines if b != "none")
    tc = TableConfig(envs=envs, kinds=kinds, seeds=seeds, models=models, baselines=base, preset=preset, out=out,
                     dataset=dataset or "", steps=steps, episodes=episodes, horizon=horizon,
                     collect_seed=collect_seed, medium_level=medium_level)
    try:
        warn_threads(jobs, "--jobs")
        keep_freed_memory()  # each step's activations reuse freed memory, as in mincore train
        with cpu_threads(rl_task.THREADS):
            run(tc, progress=not quiet, say=lambda line: click.echo(line, err=True), jobs=min(jobs, cpu_count()))
    except TableInterrupted as e:
        click.echo(str(e), err=True)
        sys.exit(130)
    click.echo((Path(out) / "table.md").read_text())
    click.echo(f"files in {out}/: table.md table.json table.png, and a folder of runs per dataset")


def _returns(ctx, param, value):
    if value is None:
        return ()
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"got {value!r}; expected comma-separated returns, e.g. 1000,2000,3600") from None


@rl.command()
@click.option("--checkpoint", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A checkpoint.h5 of a `mincore train --task rl` run (or of a table's run).")
@click.option("--target-return", "targets", default=None, callback=_returns,
              help="Return-to-go at t = 0, comma-separated: one score each (Decision-minRNNs only). "
                   "[default: the run's own, as in its summary.json]")
@click.option("--episodes", type=click.IntRange(min=1), default=None,
              help="Simulator episodes per target (the run's evaluation seeds). [default: the run's]")
@click.option("--data", default=None, help="The run's dataset file or minari:ID, where it is now. "
                                            "[default: the run's path]")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as one JSON object.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def score(path, targets, episodes, data, as_json, quiet):
    """Score a trained rl model in the simulator again, conditioned on other target returns: what a
    Decision-minRNN does when asked for less, or more, than the data's best episode (D4RL-normalised
    mean +- standard error over the episodes). Without --target-return the numbers are the run's own.
    Needs `pip install 'mincore[rl]'`.

    \b
    Examples:
      mincore rl score --checkpoint runs/rl-mingru/checkpoint.h5
      mincore rl score --checkpoint runs/rl-table/hopper-medium-expert/mingru-seed0/checkpoint.h5 \\
          --target-return 1000,2000,3600 --episodes 5
    """
    import json

    from mincore.backend import cpu_threads, keep_freed_memory
    from mincore.tasks import load_task
    from mincore.tasks.rl import collect as rl_collect
    from mincore.tasks.rl import task as rl_task
    from mincore.tasks.rl.eval import rescore

    rl_collect.require_gym()
    keep_freed_memory()
    with cpu_threads(rl_task.THREADS):
        task, config = load_task(path, data=data)
        if config.get("task") != "rl":
            raise click.BadParameter(f"{path} is a {config.get('task')} run; expected an rl run",
                                     param_hint="--checkpoint")
        res = rescore(task, targets, episodes, progress=not quiet)
    res = {"checkpoint": path, "step": config["step"], **res}
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{rl_task.LABELS[res['model']]} on {res['dataset']} (step {res['step']}, {res['env']}; "
               f"the data's best episode return {res['dataset_best_return']:.0f})")
    click.echo("| target return | normalised score | return | episodes |\n|---|---|---|---|")
    for r in res["scores"]:
        target = "-" if task.K == 1 else f"{r['target_return']:.0f}"
        click.echo(f"| {target} | {r['normalized_score']:.1f} ± {r['normalized_stderr']:.1f} | "
                   f"{r['mean_return']:.0f} ± {r['return_stderr']:.0f} | {r['episodes']} |")
