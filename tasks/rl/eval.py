"""Scored rollouts of a trained policy in the simulator: raw returns and D4RL-normalised scores.

All evaluation episodes run in lockstep as one batch (one forward per environment step for all).

Decision-minRNN context (mode):
    "window" (default)  at step t the model re-reads the last K steps, t-K+1 .. t, from a zero state:
                        exactly the windows it was trained on (training windows start anywhere in an
                        episode from a zero state), so evaluation sees no longer context than training.
    "carry"             the recurrent state is carried token by token over the whole episode
                        (act_step / push_action): O(1) work per step, but beyond K steps it conditions
                        on a longer history than any training window. The blocks' steps run fused
                        (mincore.inference: every block in one compiled call per token) when the model
                        allows it, else model.act_step / push_action; `fallback` says why not.
Both agree for t < K (tests/test_rl_collect.py). Return-to-go conditioning follows Decision
Transformer: R_1 = target_return, R_{t+1} = R_t - r_t, fed scaled by 1 / reward_scale.
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import as_tensor, no_grad

from ..loop import to_device, to_host
from . import data as rl_data
from .collect import make_env

__all__ = ["DecisionPolicy", "BCPolicy", "rollouts", "score", "score_policy", "target_return", "rescore"]


class DecisionPolicy:
    """Acts with a DecisionRNN; see the module docstring for `mode`."""

    def __init__(self, model, state_mean, state_std, *, K=20, target_return=1000.0, reward_scale=1000.0,
                 max_timestep=1000, mode="window", xp=np, fused=True):
        if mode not in ("window", "carry"):
            raise ValueError(f"mode: expected 'window' or 'carry', got {mode!r}")
        self.model, self.mean, self.std, self.K, self.mode = model, state_mean, state_std, K, mode
        self.target, self.scale, self.max_t = target_return, reward_scale, max_timestep
        self.xp = xp  # the model's arrays (numpy or cupy); observations and actions stay NumPy
        self.fused, self.stepper, self.fallback = fused, None, None

    def reset(self, n):
        self.t, self.state, self.rtg = 0, None, np.full((n, 1), self.target / self.scale, np.float32)
        self.hist = {"rtg": [], "states": [], "actions": []}
        self.stepper = None
        if self.mode == "carry" and self.fused:  # built here: a copy of the weights as they are now
            from mincore.inference import FusedStepper, Unsupported

            m = self.model
            try:
                if self.xp is not np:
                    raise Unsupported(f"the policy's arrays are {getattr(self.xp, '__name__', self.xp)}; the fused "
                                      f"step runs on NumPy arrays (CPU)")
                self.stepper, self.fallback = FusedStepper(m.blocks, norm=m.norm, head=m.head), None
                self.state = self.stepper.state(None, n)
            except Unsupported as e:
                self.fallback = str(e)

    def _push(self, emb, t, head):
        """One token through the fused blocks (DecisionRNN._push's embedding, then the stepper)."""
        m = self.model
        x = m.ln(emb + m.embed_t(t)).data
        return self.stepper.step(x, self.state, head=head)

    @no_grad()
    def act(self, obs):
        s = ((obs - self.mean) / self.std).astype(np.float32)
        n, t = len(s), min(self.t, self.max_t - 1)
        ts = np.full(n, t, np.int64)
        if self.stepper is not None:
            self._push(self.model.embed_rtg(as_tensor(self.rtg)), ts, head=False)
            a = np.tanh(self._push(self.model.embed_state(as_tensor(s)), ts, head=True))
        elif self.mode == "carry":
            a, self.state = self.model.act_step(*to_device((self.rtg, s, ts), self.xp), self.state)
        else:
            h = self.hist
            h["rtg"].append(self.rtg), h["states"].append(s), h["actions"].append(np.zeros((n, self.model.act_dim),
                                                                                           np.float32))
            for k in h:
                del h[k][:-self.K]
            lo = self.t - len(h["states"]) + 1
            steps = np.minimum(np.arange(lo, self.t + 1), self.max_t - 1)
            window = (np.stack(h["rtg"], 1), np.stack(h["states"], 1), np.stack(h["actions"], 1),
                      np.broadcast_to(steps, (n, len(steps))))
            a = self.model(*to_device(window, self.xp)).data[:, -1]
        self._ts = ts
        return to_host(a)

    def observe(self, action, reward):
        """The action taken and the reward received, for the next step's tokens."""
        action = np.asarray(action, np.float32)
        if self.stepper is not None:
            self._push(self.model.embed_action(as_tensor(action)), self._ts, head=False)
        elif self.mode == "carry":
            self.state = self.model.push_action(*to_device((action, self._ts), self.xp), self.state)
        else:
            self.hist["actions"][-1] = action
        self.rtg = self.rtg - (np.asarray(reward, np.float32) / self.scale)[:, None]
        self.t += 1


class BCPolicy:
    """Acts with a BCMLP on the normalised observation."""

    def __init__(self, model, state_mean, state_std, *, xp=np):
        self.model, self.mean, self.std, self.xp = model, state_mean, state_std, xp

    def reset(self, n):
        pass

    @no_grad()
    def act(self, obs):
        return to_host(self.model(self.xp.asarray(((obs - self.mean) / self.std).astype(np.float32))).data)

    def observe(self, action, reward):
        pass


def rollouts(policy, env: str, episodes: int = 10, *, seed: int = 0, horizon: int = 1000,
             progress: bool = False) -> np.ndarray:
    """Returns of `episodes` episodes (seeds seed*10000 + i), run in lockstep."""
    from tqdm.auto import tqdm

    model = getattr(policy, "model", None)
    if model is not None:
        model.eval()
    envs = [make_env(env, horizon) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed * 10_000 + i)[0] for i, e in enumerate(envs)])
    alive, ret = np.ones(episodes, bool), np.zeros(episodes)
    policy.reset(episodes)
    bar = tqdm(total=horizon, desc=f"eval {env}", disable=not progress, unit="step", leave=False)
    while alive.any():
        a = np.clip(policy.act(obs), -1.0, 1.0)
        r = np.zeros(episodes)
        for i in np.flatnonzero(alive):
            obs[i], r[i], term, trunc, _ = envs[i].step(a[i])
            alive[i] = not (term or trunc)
        ret += r
        policy.observe(a, r)
        bar.update(1)
    bar.close()
    return ret


def score(env: str, returns) -> dict:
    """Mean and standard error of raw returns and D4RL-normalised scores."""
    r = np.asarray(returns, np.float64)
    ns = rl_data.normalized_score(env, r)

    def se(x):  # standard error of the mean over episodes
        return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
    return {"mean_return": float(r.mean()), "return_stderr": se(r), "normalized_score": float(ns.mean()),
            "normalized_stderr": se(ns), "episodes": len(r)}


def target_return(cfg, data) -> float:
    """The return-to-go a run conditions on at t = 0: cfg.target_return, else the data's best episode."""
    return float(cfg.target_return or data.returns.max())


def score_policy(task, target, episodes: int | None = None, progress: bool = False) -> dict:
    """score() of `episodes` (default: the run's) simulator episodes of a trained rl task's policy
    conditioned on `target`, with the run's evaluation seeds; plus the raw "returns"."""
    cfg = task.cfg
    ret = rollouts(task.policy(target), cfg.env, cfg.eval_episodes if episodes is None else episodes,
                   seed=cfg.seed, horizon=cfg.horizon, progress=progress)
    return {**score(cfg.env, ret), "returns": [float(r) for r in ret]}


def rescore(task, targets=(), episodes: int | None = None, progress: bool = False) -> dict:
    """Scores of a trained rl task (mincore.tasks.load_task) conditioned on each target return in
    `targets` (none given: the run's own target, so the numbers are its summary.json's), with the
    run's evaluation seeds; `episodes` (default: the run's) per target. A BC model takes no target."""
    cfg = task.cfg
    if targets and task.K == 1:
        raise ValueError(f"target returns: the {cfg.model} model is a behaviour-cloning MLP and takes no target "
                         "return; score it without one")
    bad = [t for t in targets if not np.isfinite(t)]
    if bad:
        raise ValueError(f"target returns: expected finite returns, got {bad}")
    if episodes is not None and episodes < 1:
        raise ValueError(f"episodes: expected at least 1, got {episodes}")
    rows = [{"target_return": float(t), **score_policy(task, float(t), episodes, progress)}
            for t in (targets or [target_return(cfg, task.data)])]
    return {"model": cfg.model, "env": cfg.env, "dataset": cfg.dataset,
            "dataset_best_return": float(task.data.returns.max()), "scores": rows}
