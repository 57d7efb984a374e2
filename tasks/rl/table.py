"""`mincore rl table`: Decision-minGRU, Decision-minLSTM, BC and %BC on each dataset, as one table.

For every dataset (env x kind, collected once with the collection seed (0, as D4RL's files are one
fixed collection) and the preset's collection settings, shared by all models and seeds; or one given
file / minari:ID) and every model and training seed, one `mincore train --task rl` run with no
baselines of its own goes into
    OUT/<env>-<kind>/<model>-seed<k>/
A collection seed other than 0 or a medium level other than D4RL's names the row (and its folder):
`medium (collection seed 1)`, `medium (medium level 50)`.
BC and %BC are runs of models `bc` / `pbc`: the same loop and the same step budget as the baselines
inside a training run. A folder whose summary.json holds a scored run of exactly these settings is
read, not run again; one holding an interrupted run of these settings (Ctrl-C, SIGTERM: a checkpoint
and no summary) is continued from its checkpoint; a folder holding anything else is replaced.
The runs go one at a time in this process, or N at a time in worker processes (jobs.py).

Each cell: the D4RL-normalised score, mean +- standard error over the training seeds when there are
several (each seed's score is the mean over its evaluation episodes), else the one run's mean +-
standard error over its evaluation episodes; `over` in table.json says which. Written to OUT:
table.md, table.json and table.png (bars with those error bars, the dataset's mean episode as a line).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import collect as rl_collect
from . import data as rl_data
from . import minari_io
from . import task as rl_task
from .jobs import Job, TableInterrupted, run_one, run_parallel

__all__ = ["TableConfig", "TableInterrupted", "run", "aggregate", "markdown", "plot"]


@dataclass(frozen=True)
class TableConfig:
    envs: tuple = ("halfcheetah",)
    kinds: tuple = ("medium", "medium-replay", "medium-expert")
    seeds: int = 3                        # training seeds 0 .. seeds-1
    models: tuple = ("mingru", "minlstm")
    baselines: tuple = ("bc", "pbc")
    preset: str = "default"
    out: str = "runs/rl-table"
    dataset: str = ""                     # one D4RL-layout file or minari:ID instead of collecting
    steps: int | None = None              # training steps of every run (smoke tests); None: the preset's
    episodes: int | None = None           # evaluation episodes; None: the preset's
    horizon: int | None = None            # episode time limit in collection and evaluation
    collect_seed: int = 0                 # ARS seed of the collected datasets (D4RL's are one fixed collection)
    medium_level: float | None = None     # collection's medium level, D4RL-normalised (None: D4RL's; one env)

    def validate(self):
        if not self.envs or any(e not in rl_collect.ENVS for e in self.envs):
            raise ValueError(f"envs: expected names from {', '.join(rl_collect.ENVS)}, got {list(self.envs)}")
        if not self.dataset and (not self.kinds or any(k not in rl_collect.KINDS for k in self.kinds)):
            raise ValueError(f"kinds: expected names from {', '.join(rl_collect.KINDS)}, got {list(self.kinds)}")
        if self.dataset and len(self.envs) != 1:
            raise ValueError(f"envs: a given dataset is scored in one environment; got {list(self.envs)}")
        runs = (*self.models, *self.baselines)
        if not runs or any(m not in rl_task.MODELS for m in runs) or len(set(runs)) != len(runs):
            raise ValueError(f"models / baselines: expected distinct names from {', '.join(rl_task.MODELS)}, got "
                             f"{list(self.models)} / {list(self.baselines)}")
        if self.seeds < 1:
            raise ValueError(f"seeds: expected at least 1, got {self.seeds}")
        if self.collect_seed < 0:
            raise ValueError(f"collect_seed: expected an integer >= 0, got {self.collect_seed}")
        if self.medium_level is not None and (len(self.envs) != 1 or self.dataset):
            raise ValueError(f"medium_level: D4RL's medium levels differ by environment (40.7 halfcheetah, 44.3 "
                             f"hopper, 62.1 walker2d), so another level is for one environment and collected data; "
                             f"got envs {list(self.envs)}" + (f" and dataset {self.dataset!r}" if self.dataset else ""))
        if self.medium_level is not None and not np.isfinite(self.medium_level):
            raise ValueError(f"medium_level: expected a finite D4RL-normalised level, got {self.medium_level}")

    def run_config(self, model: str, seed: int, env: str, kind: str | None, dataset: str) -> rl_task.RLConfig:
        """One run's Config: the preset, these settings, no baselines of its own."""
        over = {"horizon": self.horizon, "eval_episodes": self.episodes}
        if self.steps is not None:
            over.update(steps=self.steps, bc_steps=self.steps)
        cfg = rl_task.config(self.preset, model=model, env=env, kind=kind, dataset=dataset, seed=seed,
                             baselines="none", **over)
        if model in rl_task.BASELINES:  # the baselines' budget, as inside a training run
            cfg = dataclasses.replace(cfg, steps=cfg.bc_steps or cfg.steps)
        return dataclasses.replace(cfg, eval_every=min(cfg.eval_every, cfg.steps),
                                   log_every=min(cfg.log_every, cfg.steps))


def _datasets(tc: TableConfig, progress: bool, say) -> list[tuple[str, str | None, str, str]]:
    """[(env, kind or None for a given file, row label, dataset path or minari:ID)] of the table's rows,
    collecting what is missing."""
    if tc.dataset:
        label = minari_io.dataset_id(tc.dataset) if minari_io.is_minari(tc.dataset) else Path(tc.dataset).stem
        return [(tc.envs[0], None, label, tc.dataset)]
    unusual = ([f"collection seed {tc.collect_seed}"] if tc.collect_seed else []) + \
        ([f"medium level {tc.medium_level:g}"] if tc.medium_level is not None else [])
    rows = []
    for env in tc.envs:
        for kind in tc.kinds:
            label = f"{kind} ({', '.join(unusual)})" if unusual else kind
            say(f"dataset {env} {label}: collecting (or reading the cached one)")
            cfg = rl_task.config(tc.preset, env=env, kind=kind, seed=tc.collect_seed,
                                 **({"horizon": tc.horizon} if tc.horizon else {}))
            cc = dataclasses.replace(rl_task.collect_config(cfg), medium_level=tc.medium_level)
            rows.append((env, kind, label, str(rl_collect.collect(cc, progress=progress))))
    return rows


def _state(folder: Path, cfg) -> tuple[str, dict | None]:
    """What `folder` holds for `cfg`: ("scored", summary) for a scored run of exactly these settings,
    ("stopped", None) for an interrupted one (config.json of these settings, a checkpoint, no summary),
    else ("new", None): nothing, or anything else, which is replaced."""
    want = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as the run wrote it (tuples become lists)
    summary, config = _json(folder / "summary.json"), _json(folder / "config.json")
    if summary is not None:
        return ("scored", summary) if summary.get("config") == want and "normalized_score" in summary else ("new", None)
    if config is not None and config.get("config") == want and (folder / "checkpoint.h5").exists():
        return "stopped", None
    return "new", None


def _json(path: Path) -> dict | None:
    """A run file's JSON object; None when missing or unreadable."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def run(tc: TableConfig, *, progress: bool = True, say=print, jobs: int = 1) -> dict:
    """Run (or read) every run of the table, `jobs` at a time (tasks/rl/jobs.py); write table.md / .json /
    .png into tc.out; the results."""
    tc.validate()
    rl_collect.require_gym()
    out = Path(tc.out)
    rows = _datasets(tc, progress, say)
    runs = [(r, m, k) for r in rows for m in (*tc.models, *tc.baselines) for k in range(tc.seeds)]
    done, todo = {}, []
    for i, ((env, kind, label, path), model, seed) in enumerate(runs, 1):
        cfg = tc.run_config(model, seed, env, kind, path)
        folder = out / _folder_name(f"{env}-{label}") / f"{model}-seed{seed}"
        head = f"[{i}/{len(runs)}] {env} {label} {rl_task.LABELS[model]} seed {seed}"
        state, s = _state(folder, cfg)
        if state == "scored":
            say(f"{head}: read from {folder} (normalised score {s['normalized_score']:.1f})")
            done[i] = s
        else:
            todo.append(Job(i, head, cfg, folder, state))
    if jobs > 1 and len(todo) > 1:
        done.update(run_parallel(todo, min(jobs, len(todo)), say))
    else:
        done.update({job.index: run_one(job, progress, say) for job in todo})
    summaries: dict = {}
    for i, ((env, _, label, _), model, _) in enumerate(runs, 1):
        summaries.setdefault((env, label), {}).setdefault(model, []).append(done[i])
    result = aggregate(tc, summaries)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(markdown(result))
    plot(result, out / "table.png")
    return result


def _mean_se(summaries: list[dict]) -> tuple[float, float, str]:
    """Mean and standard error of the normalised score: over seeds when several, else over episodes."""
    scores = np.array([s["normalized_score"] for s in summaries])
    if len(scores) > 1:
        return float(scores.mean()), float(scores.std(ddof=1) / np.sqrt(len(scores))), "seeds"
    return float(scores[0]), float(summaries[0]["normalized_stderr"]), "episodes"


def aggregate(tc: TableConfig, summaries: dict) -> dict:
    """table.json's content from the runs' summaries {(env, kind): {model: [summary per seed]}}."""
    rows = []
    for (env, kind), by_model in summaries.items():
        any_run = next(iter(by_model.values()))[0]
        cells = {}
        for model, ss in by_model.items():
            mean, se, over = _mean_se(ss)
            cells[model] = {"label": rl_task.LABELS[model], "normalized_mean": mean, "normalized_stderr": se,
                            "over": over, "per_seed": [s["normalized_score"] for s in ss],
                            "mean_return": float(np.mean([s["mean_return"] for s in ss])),
                            "episodes": ss[0]["episodes"],
                            "wall_seconds": float(sum(s["wall_seconds"] for s in ss))}
        best = float(rl_data.normalized_score(env, any_run["dataset_best_return"]))
        rows.append({"env": env, "kind": kind, "dataset": any_run["dataset"], "cells": cells,
                     "dataset_normalized_mean": any_run["dataset_normalized_score"], "dataset_normalized_best": best,
                     "dataset_episodes": any_run["dataset_episodes"],
                     "dataset_transitions": any_run["dataset_transitions"]})
    return {"settings": dataclasses.asdict(tc), "models": [*tc.models, *tc.baselines], "rows": rows,
            "over": "seeds" if tc.seeds > 1 else "episodes"}


def _row_name(row: dict, sep: str = " ") -> str:
    """'env kind'; a given file's stem or Minari id that already starts with the env name stands alone."""
    kind = row["kind"]
    return kind if kind.startswith(f"{row['env']}-") or "/" in kind else f"{row['env']}{sep}{kind}"


def markdown(result: dict) -> str:
    """The results table in Markdown, with a caption saying what the +- is."""
    models, st = result["models"], result["settings"]
    head = ["dataset", *(rl_task.LABELS[m] for m in models), "dataset episodes: mean / best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [f"{r['cells'][m]['normalized_mean']:.1f} ± {r['cells'][m]['normalized_stderr']:.1f}" for m in models]
        lines.append(f"| {_row_name(r)} | " + " | ".join(cells) +
                     f" | {r['dataset_normalized_mean']:.1f} / {r['dataset_normalized_best']:.1f} |")
    n_eval = result["rows"][0]["cells"][models[0]]["episodes"] if result["rows"] else 0
    if result["over"] == "seeds":
        what = (f"mean ± standard error over {st['seeds']} training seeds (each seed: the mean over {n_eval} "
                f"evaluation episodes)")
    else:
        what = f"one training seed: mean ± standard error over its {n_eval} evaluation episodes"
    walls = ", ".join(f"{rl_task.LABELS[m]} {sum(r['cells'][m]['wall_seconds'] for r in result['rows']) / 60:.1f}"
                      for m in models)
    return "\n".join([f"D4RL-normalised score, {what}; preset {st['preset']}.", "", *lines, "",
                      f"Wall time of all runs, minutes: {walls}.", ""])


def plot(result: dict, path) -> None:
    """Grouped bars (one group per dataset, one bar per model) with standard-error bars; the dataset's
    mean episode as a dashed line across its group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, rows = result["models"], result["rows"]
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 1), 3.6))
    x = np.arange(len(rows))
    for j, m in enumerate(models):
        ax.bar(x + (j - (len(models) - 1) / 2) * width, [r["cells"][m]["normalized_mean"] for r in rows], width,
               yerr=[r["cells"][m]["normalized_stderr"] for r in rows], capsize=2, label=rl_task.LABELS[m])
    for i, r in enumerate(rows):
        ax.hlines(r["dataset_normalized_mean"], i - 0.45, i + 0.45, colors="k", linestyles="dashed",
                  label="dataset mean" if i == 0 else None)
    ax.set_xticks(x, [_row_name(r, "\n").replace(" (", "\n(") for r in rows], fontsize=8)  # a note: own line
    ax.set_ylabel("D4RL-normalised score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
