"""The rl task module: Decision-minGRU / Decision-minLSTM on D4RL-layout data (Feng et al. 2024, sec. 4.2).

train(cfg, out):
 1. data: cfg.dataset (a D4RL-layout HDF5 file: genuine D4RL or `mincore rl collect`; or `minari:ID`, a
    local Minari dataset, tasks/rl/minari_io.py), or, when empty, a dataset of cfg.env / cfg.kind
    collected with tasks/rl/collect.py (cached, reused next time);
 2. the model (mingru | minlstm | bc | pbc) through the shared loop (tasks/loop.py): MSE on actions over
    K-step windows (K = 1 for the MLPs); held-out loss on windows of `val_fraction` of the episodes;
 3. once it is trained, the baselines of cfg.baselines on the same data, each with the same loop and
    budget into out/<name>: `bc`, the MLP on every training episode, and `pbc` (%BC, Decision
    Transformer's percentile behaviour cloning), the MLP on the best `pbc_fraction` of the training
    steps by episode return; then `eval_episodes` simulator rollouts of each (tasks/rl/eval.py). The
    loop's summary.json gains normalized_score, mean_return (+ standard errors), <baseline>_normalized_score,
    <baseline>_normalized_stderr, <baseline>_mean_return, dataset_mean_return, dataset_best_return,
    episodes, wall_seconds (all stages) and dataset.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mincore.autograd import F, no_grad, optim

from .. import Option, loop
from ..config import LoopConfig
from . import collect as rl_collect
from . import data as rl_data
from . import minari_io
from .eval import BCPolicy, DecisionPolicy, score_policy, target_return
from .model import BCMLP, DecisionRNN

__all__ = ["RLConfig", "PRESETS", "MODELS", "BASELINES", "LABELS", "THREADS", "OPTIONS", "RLTask", "Task", "config",
           "from_dict", "train", "describe", "collect_config", "check_env"]

MODELS = ("mingru", "minlstm", "bc", "pbc")
BASELINES = ("bc", "pbc")  # MLP baselines trained beside every run (RLConfig.baselines)
THREADS = 1  # CPU threads `mincore train` uses unless --threads says otherwise (small models, as copy)
OPTIONS = (Option("env", "MuJoCo environment. [default: halfcheetah]", choices=tuple(rl_collect.ENVS)),
           Option("kind", "dataset kind to collect when no --dataset is given. [default: medium-replay]",
                  choices=rl_collect.KINDS),
           Option("dataset", "a D4RL-layout HDF5 file, or minari:ID for a dataset in the local Minari storage "
                             "[default: collect one with `mincore rl collect`, cached].", file=True,
                  schemes=(minari_io.PREFIX,)),
           Option("baselines", "MLP baselines trained and scored beside the model, comma-separated: bc "
                               "(behaviour cloning), pbc (%BC: the best 10% of the steps by episode return); "
                               "'none' for neither. [default: bc,pbc]"))
# Decision Transformer's reward scale for MuJoCo returns-to-go
REWARD_SCALE = 1000.0


@dataclass(frozen=True)
class RLConfig(LoopConfig):
    model: str = "mingru"            # mingru | minlstm (Decision-minRNN) | bc | pbc (MLP baselines)
    env: str = "halfcheetah"         # halfcheetah | hopper | walker2d
    kind: str = "medium-replay"      # dataset kind to collect when no dataset is given
    dataset: str = ""                # D4RL-layout HDF5 file or minari:ID ("" = collect / reuse the cached one)
    baselines: str = "bc,pbc"        # baselines trained and scored after the model (comma-separated; "" none)
    pbc_fraction: float = 0.1        # %BC: share of the training steps, best episodes by return
    K: int = 20                      # context: time steps per window (3K tokens)
    d_model: int = 128               # embedding / residual width
    n_layers: int = 3                # minRNN + MLP blocks
    expansion: float = 1.0           # recurrent width = expansion * d_model
    dropout: float = 0.1             # in the blocks and after the embedding LayerNorm
    max_timestep: int = 1000         # rows of the timestep embedding (episode length)
    bc_hidden: int = 256             # BC MLP width
    bc_steps: int = 0                # BC baseline steps (0: same as steps)
    val_fraction: float = 0.05       # episodes held out for the held-out loss
    eval_windows: int = 512          # held-out windows
    eval_episodes: int = 10          # simulator episodes for the final score
    eval_mode: str = "window"        # window (re-read the last K steps) | carry (recurrent state)
    target_return: float = 0.0       # return-to-go at t = 0 (0: the dataset's best episode return)
    horizon: int = 1000              # episode time limit in collection and evaluation
    ars_iterations: int | None = None  # collection: at most this many ARS iterations (None: collection's default)
    transitions: int = 100_000       # collection: transitions for random / medium (per half: m-expert)

    def validate(self):
        super().validate()
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.env not in rl_collect.ENVS or self.kind not in rl_collect.KINDS:
            raise ValueError(f"env/kind: expected env in {list(rl_collect.ENVS)} and kind in "
                             f"{list(rl_collect.KINDS)}; got {self.env!r}, {self.kind!r}")
        wrong = [b for b in self.baseline_names() if b not in BASELINES]
        if wrong:
            raise ValueError(f"baselines: unknown {', '.join(map(repr, wrong))} in {self.baselines!r}; expected a "
                             f"comma-separated subset of {', '.join(BASELINES)}, or none")
        if not 0 < self.pbc_fraction <= 1:
            raise ValueError(f"pbc_fraction must be in (0, 1], got {self.pbc_fraction!r}")
        if self.eval_mode not in ("window", "carry"):
            raise ValueError(f"eval_mode must be window or carry, got {self.eval_mode!r}")
        if min(self.K, self.d_model, self.n_layers, self.eval_windows, self.eval_episodes) < 1:
            raise ValueError("K, d_model, n_layers, eval_windows and eval_episodes must be >= 1")

    def baseline_names(self) -> list[str]:
        """The baselines as a list ("none" and "" give none)."""
        names = [b.strip() for b in self.baselines.split(",") if b.strip()]
        return [] if names == ["none"] else names


PRESETS = {
    # 2-core CPU: width 64, 6000 steps of batch 64 at K = 20, the baselines the same. Measured on the
    # local halfcheetah medium-replay data (docs/RL.md): 2000 steps left the Decision-minRNNs
    # undertrained (normalised 4.8 against BC's 29.7); 6000 gave 28.1 against BC's 20.6 (3 seeds).
    "default": RLConfig(d_model=64, steps=6000, batch_size=64, lr=1e-3, warmup=200, weight_decay=1e-4,
                        clip=0.25, eval_every=1500, log_every=20, bc_steps=6000),
    # Feng et al. 2024 / Decision Mamba: embedding 128 (256 for hopper medium / medium-replay),
    # lr 1e-4 for hopper-medium, hopper-medium-replay, walker2d-medium, else 1e-3; AdamW weight decay
    # 1e-4, 10k linear warmup, dropout 0.1, 100k steps, batch 64, K = 20, 100 evaluation episodes
    "paper": RLConfig(d_model=128, steps=100_000, batch_size=64, lr=1e-3, warmup=10_000, min_lr_factor=1.0,
                      weight_decay=1e-4, clip=0.25, eval_every=5000, log_every=100, eval_episodes=100,
                      transitions=1_000_000),
}
_SLOW_LR = {("hopper", "medium"), ("hopper", "medium-replay"), ("walker2d", "medium")}


def config(preset: str = "default", **overrides) -> RLConfig:
    """A preset with some fields replaced (None values ignored); `paper` picks d_model and lr by
    env/kind as the paper does, unless given."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("dataset") and not minari_io.is_minari(given["dataset"]):
        given["dataset"] = os.path.abspath(given["dataset"])  # a run stays valid from any directory
    cfg = loop.preset_config(PRESETS, preset, **given)
    if preset == "paper":
        pair = (cfg.env, cfg.kind)
        auto = {"d_model": 256 if pair in (("hopper", "medium"), ("hopper", "medium-replay")) else 128,
                "lr": 1e-4 if pair in _SLOW_LR else 1e-3}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in auto.items() if k not in given})
    return cfg


def from_dict(d: dict) -> RLConfig:
    """The Config saved in config.json / a checkpoint."""
    return loop.config_from_dict(RLConfig, d, "rl")


def collect_config(cfg: RLConfig) -> rl_collect.CollectConfig:
    ars = {} if cfg.ars_iterations is None else {"ars_iterations": cfg.ars_iterations}
    return rl_collect.CollectConfig(env=cfg.env, kind=cfg.kind, seed=cfg.seed, horizon=cfg.horizon,
                                    transitions=cfg.transitions, **ars)


class RLTask:
    """Action regression on K-windows of a D4RL-layout dataset, for mincore.tasks.loop.train."""

    metric, higher_is_better = "loss", False

    def __init__(self, cfg: RLConfig, data: rl_data.Dataset | None = None):
        cfg.validate()
        if not cfg.dataset and data is None:
            raise ValueError("RLTask: cfg.dataset is empty (train() collects a dataset first)")
        self.cfg, self.xp = cfg, np
        self.data = data if data is not None else rl_data.read(cfg.dataset)
        n_ep = len(self.data.episodes)
        perm = np.random.default_rng((cfg.seed, 3)).permutation(n_ep)
        n_val = int(round(cfg.val_fraction * n_ep)) if n_ep >= 2 else 0
        n_val = max(n_val, 1) if n_ep >= 2 and cfg.val_fraction > 0 else n_val
        self.train_data = self.data.subset(np.sort(perm[n_val:])) if n_val else self.data
        val = self.data.subset(np.sort(perm[:n_val])) if n_val else self.data  # tiny data: train episodes
        # statistics of the training episodes serve training, held-out windows and rollouts alike
        val.state_mean, val.state_std = self.train_data.state_mean, self.train_data.state_std
        if cfg.model == "pbc":  # %BC: the best training episodes; states normalised as for the others
            best = self.train_data.subset(self.train_data.best_episodes(cfg.pbc_fraction))
            best.state_mean, best.state_std = self.train_data.state_mean, self.train_data.state_std
            self.train_data = best
        self.K = 1 if cfg.model in ("bc", "pbc") else cfg.K
        self.val = self._windows(val, np.random.default_rng((cfg.seed, 4)), cfg.eval_windows)
        obs, act = self.data.obs_dim, self.data.act_dim
        self.model = (BCMLP(obs, act, hidden=cfg.bc_hidden, dropout=cfg.dropout, seed=cfg.seed)
                      if self.K == 1 else
                      DecisionRNN(obs, act, d_model=cfg.d_model, n_layers=cfg.n_layers, cell=cfg.model,
                                  expansion=cfg.expansion, dropout=cfg.dropout, max_timestep=cfg.max_timestep,
                                  engine=cfg.engine, seed=cfg.seed))

    def _windows(self, data, rng, size):
        return data.windows(rng, size, self.K, reward_scale=REWARD_SCALE, max_timestep=self.cfg.max_timestep)

    def param_groups(self):
        return optim.param_groups(self.model.named_parameters(), self.cfg.weight_decay,
                                  [n for n, p in self.model.named_parameters() if p.no_decay])

    def batch(self, rng, size):
        return loop.to_device(self._windows(self.train_data, rng, size), self.xp)

    def _predict(self, w):
        if self.K == 1:
            return self.model(w["states"])
        return self.model(w["rtg"], w["states"], w["actions"], w["timesteps"])

    def loss(self, w):
        return F.mse(self._predict(w), w["actions"], mask=w["mask"][..., None]), {}

    @no_grad()
    def evaluate(self) -> dict:
        w = loop.to_device(self.val, self.xp)
        return {"loss": float(F.mse(self._predict(w), w["actions"], mask=w["mask"][..., None]).item())}

    def meta(self) -> dict:
        return {"env": self.cfg.env, "kind": self.cfg.kind, "dataset": self.cfg.dataset}

    def policy(self, target_return):
        d = self.train_data
        if self.K == 1:
            return BCPolicy(self.model, d.state_mean, d.state_std, xp=self.xp)
        return DecisionPolicy(self.model, d.state_mean, d.state_std, K=self.cfg.K, target_return=target_return,
                              reward_scale=REWARD_SCALE, max_timestep=self.cfg.max_timestep, mode=self.cfg.eval_mode,
                              xp=self.xp)


Task = RLTask


def train(cfg: RLConfig, out="runs/rl", *, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Collect (or read) the data, train the model, then its baselines, and score them in the simulator.
    A folder holding a run is refused unless `resume` continues it or `force` replaces it."""
    t0 = time.perf_counter()
    cfg.validate()
    rl_collect.require_gym()  # the scores need the simulator: say so before any training
    if not cfg.dataset:
        path = rl_collect.collect(collect_config(cfg), progress=progress)
        cfg = dataclasses.replace(cfg, dataset=str(path))
    data = rl_data.read(cfg.dataset)
    check_env(data, cfg)
    task = RLTask(cfg, data)

    def scores(summary: dict) -> dict:  # summary.json's simulator scores, after training
        return _scores(task, data, out, progress, summary, t0)
    return loop.train(task, cfg, out, task_name="rl", resume=resume, force=force, progress=progress,
                      report=scores)


def check_env(data: rl_data.Dataset, cfg: RLConfig) -> None:
    """Refuse data of another environment than cfg.env (named by the data's env / env_id attributes)."""
    env, env_id = data.attrs.get("env"), data.attrs.get("env_id")
    if env is None and env_id is not None and env_id != rl_collect.ENVS[cfg.env]:
        raise ValueError(f"dataset {cfg.dataset} was recorded in {env_id}; the scored rollouts run "
                         f"{', '.join(rl_collect.ENVS.values())} only (--env)")
    if env is not None and env != cfg.env:
        raise ValueError(f"dataset {cfg.dataset} was collected on {env!r}, but --env is {cfg.env!r}")


def _scores(task, data, out, progress, summary, t0) -> dict:
    """Rollouts of the trained model and of each baseline (trained here with the same loop and budget,
    into out/<baseline>), and the data's own returns, as summary keys."""
    cfg = task.cfg
    target = target_return(cfg, data)
    res = score_policy(task, target, progress=progress)
    extra = {}
    for name in cfg.baseline_names():
        if name == cfg.model:  # the run is that baseline
            b = res
        else:
            b_cfg = dataclasses.replace(cfg, model=name, steps=cfg.bc_steps or cfg.steps)
            b_task = RLTask(b_cfg, data)
            loop.train(b_task, b_cfg, Path(out) / name, task_name="rl", progress=progress)
            b = score_policy(b_task, target, progress=progress)
            extra[f"{name}_train_episodes"] = len(b_task.train_data.episodes)
        extra.update({f"{name}_{k}": b[k] for k in ("normalized_score", "normalized_stderr", "mean_return",
                                                     "return_stderr", "returns")})
    ds = data.summary()
    return {**res, **extra, "dataset_mean_return": ds["mean_return"], "dataset_best_return": ds["best_return"],
            "dataset_normalized_score": float(rl_data.normalized_score(cfg.env, ds["mean_return"])),
            "dataset_episodes": ds["episodes"], "dataset_transitions": ds["transitions"], "dataset": cfg.dataset,
            "target_return": target, "eval_mode": cfg.eval_mode,
            "train_wall_seconds": summary["wall_seconds"], "wall_seconds": round(time.perf_counter() - t0, 3)}


LABELS = {"mingru": "Decision-minGRU", "minlstm": "Decision-minLSTM", "bc": "BC", "pbc": "%BC"}


def describe(summary: dict) -> str:
    """The finished run in words (`mincore train` prints it): held-out loss, then the simulator scores
    beside the baselines' and the data's."""
    s, line = summary, loop.describe(summary, RLTask.metric)
    if "normalized_score" not in s:
        return line
    base = "".join(f"; {LABELS[b]} {s[f'{b}_normalized_score']:.1f}" for b in BASELINES
                   if f"{b}_normalized_score" in s)
    return (f"{line}\nnormalised score {s['normalized_score']:.1f} +- {s['normalized_stderr']:.1f} (return "
            f"{s['mean_return']:.0f}, {s['episodes']} episodes){base}; dataset "
            f"mean return {s['dataset_mean_return']:.0f}, best {s['dataset_best_return']:.0f}")
