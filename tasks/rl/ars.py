"""Augmented Random Search V2-t (Mania et al. 2018) with lockstep rollouts, both cores, and a
resumable cache: the behaviour policies of tasks/rl/collect.py.

Policy: a = clip(M (s - mu) / sigma, -1, 1), mu / sigma the running mean / std of every state seen in
training (ARS V2). Iteration: N directions delta_k, rollouts of M +- noise delta_k, keep the best b by
max(r+, r-), M += step / (b sigma_R) sum (r+ - r-) delta_k (hopper / walker2d subtract the alive bonus
from the training returns, as the ARS paper does); then one noise-free evaluation episode of the new
policy on a fixed seed (10000 + iteration).

Speed: the 2N rollouts of an iteration run in lockstep, one batched product for all their actions per
time step, the environments stepped through `env.unwrapped` (the time limit is ours). With `workers`
> 1 the batch is split over worker processes that each own their environments and run their share
of whole episodes, so only policies and finished episodes cross process boundaries. Every episode
depends only on its policy and its own seed (action noise too comes from a generator seeded by the
episode's seed), so results are bit-identical for any number of workers.

Cache: one run per (env, seed, directions, top, step_size, noise, horizon) in a folder: state.npz
(snapshots (M, mu, sigma) and evaluation returns of every iteration, and the optimiser's state: M,
the state statistics and the random generator) and replay-*.npz chunks with the training rollouts.
The run is written every `SAVE_SECONDS` and when training stops, so an interrupted run, or one that
must go further (a higher level, more iterations), continues where it stopped and gives the same
numbers as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ALIVE_BONUS", "ARSRun", "Rollouts", "lockstep", "policy_of", "SAVE_SECONDS"]

ALIVE_BONUS = {"halfcheetah": 0.0, "hopper": 1.0, "walker2d": 1.0}
SAVE_SECONDS = 120.0
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def lockstep(envs, W, mu, sd, seeds, horizon, action_noise=0.0):
    """Episodes of the linear policies W[i] (B, act, obs) on envs[i] (unwrapped, at least B), all B in
    one lockstep loop: a_i = clip(W_i (o_i - mu_i) / sd_i [+ noise], -1, 1); mu / sd (obs,) or (B, obs).
    Gaussian action noise of episode i is drawn from default_rng((seeds[i], 1)). Returns D4RL arrays
    per episode (a list of dicts)."""
    B, n_obs = len(W), W.shape[2]
    mu, sd = np.broadcast_to(mu, (B, n_obs)), np.broadcast_to(sd, (B, n_obs))
    o = np.stack([envs[i].reset(seed=int(seeds[i]))[0] for i in range(B)])
    noise = [np.random.default_rng((int(s), 1)) for s in seeds] if action_noise else None
    buf = {"observations": np.zeros((horizon, B, n_obs), np.float32),
           "actions": np.zeros((horizon, B, W.shape[1]), np.float32), "rewards": np.zeros((horizon, B), np.float32),
           "terminals": np.zeros((horizon, B), bool)}
    length, live = np.full(B, horizon), np.arange(B)
    for t in range(horizon):
        x = (o[live] - mu[live]) / sd[live]
        a = (W[live] * x[:, None, :]).sum(-1)  # row sums: the same numbers for any batch composition
        if action_noise:
            a = a + action_noise * np.stack([noise[i].standard_normal(a.shape[1]) for i in live])
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        buf["observations"][t, live], buf["actions"][t, live] = o[live], a
        ended = []
        for j, i in enumerate(live):
            o[i], r, term, _, _ = envs[i].step(a[j])
            buf["rewards"][t, i], buf["terminals"][t, i] = r, term
            if term:
                ended.append(i)
                length[i] = t + 1
        if ended:
            live = np.setdiff1d(live, ended)
            if not len(live):
                break
    eps = []
    for i in range(B):
        n = length[i]
        ep = {k: buf[k][:n, i].copy() for k in buf}
        ep["timeouts"] = np.zeros(n, bool)
        ep["timeouts"][-1] = not ep["terminals"][-1]  # the time limit ended it
        eps.append(ep)
    return eps


def policy_of(snapshot, n_obs, n_act):
    """(M, mu, sigma) of a flat snapshot."""
    k = n_act * n_obs
    return snapshot[:k].reshape(n_act, n_obs), snapshot[k:-n_obs], snapshot[-n_obs:]


_ENVS: dict = {}  # env name -> a process's environments, kept across calls (the time limit is lockstep's)


def _envs(env, horizon, n):
    from .collect import make_env

    envs = _ENVS.setdefault(env, [])
    while len(envs) < n:
        envs.append(make_env(env, horizon).unwrapped)
    return envs


def _run(env, horizon, W, mu, sd, seeds, action_noise):
    return lockstep(_envs(env, horizon, len(W)), W, mu, sd, seeds, horizon, action_noise)


class Rollouts:
    """Lockstep rollouts on `workers` processes (1: in this process). A context manager."""

    def __init__(self, env: str, horizon: int, workers: int = 1):
        self.env, self.horizon, self.workers = env, horizon, max(1, int(workers))
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            import multiprocessing

            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def __call__(self, W, mu, sd, seeds, action_noise=0.0):
        W, seeds = np.asarray(W, np.float64), np.asarray(seeds)
        if self.pool is None or len(W) < 2:
            return _run(self.env, self.horizon, W, mu, sd, seeds, action_noise)
        mu, sd = np.broadcast_to(mu, (len(W), W.shape[2])), np.broadcast_to(sd, (len(W), W.shape[2]))
        parts = np.array_split(np.arange(len(W)), min(self.workers, len(W)))
        futs = [self.pool.submit(_run, self.env, self.horizon, W[p], mu[p], sd[p], seeds[p], action_noise)
                for p in parts]
        return [ep for f in futs for ep in f.result()]


class _Stats:
    """Running mean / std of states (Welford, merged per episode), as ARS V2."""

    def __init__(self, n):
        self.count, self.mean, self.m2 = 0, np.zeros(n), np.zeros(n)

    def update(self, x):
        n = len(x)
        if n == 0:
            return
        mu = x.mean(0)
        d, tot = mu - self.mean, self.count + n
        self.m2 += ((x - mu) ** 2).sum(0) + d ** 2 * self.count * n / tot
        self.mean += d * n / tot
        self.count = tot

    @property
    def std(self):
        return np.sqrt(self.m2 / self.count) + 1e-2 if self.count > 1 else np.ones_like(self.mean)


@dataclass
class ARSRun:
    """One cached ARS run of `env`: hyperparameters, and where its folder is."""

    env: str
    seed: int
    directions: int
    top: int
    step_size: float
    noise: float
    horizon: int
    folder: Path

    def load(self) -> dict:
        """The run's state so far (empty run when nothing is cached)."""
        p = self.folder / "state.npz"
        if not p.exists():
            return {}
        with np.load(p) as z:
            s = {k: z[k] for k in z.files}
        s["rng"] = json.loads(str(s["rng"]))
        return s

    def replay(self, upto: int) -> list[dict]:
        """Training rollouts of iterations 0..upto, in order."""
        eps = []
        for p in sorted(self.folder.glob("replay-*.npz")):
            first = int(p.stem.split("-")[1])
            if first > upto:
                continue
            with np.load(p) as z:  # each z[k] reads the whole array again: once per chunk
                it, lens, arrays = z["rollout_iteration"], z["rollout_lengths"], {k: z[k] for k in KEYS}
            ends = np.cumsum(lens)
            for i in np.flatnonzero(it <= upto):
                eps.append({k: v[ends[i] - lens[i]:ends[i]] for k, v in arrays.items()})
        return eps

    def train(self, done, max_iterations: int, rollouts: Rollouts, level=None, progress=True) -> dict:
        """Run (or continue) until done(evaluation returns) is true or `max_iterations` are done; the state.
        `level(returns)` -> the normalised levels shown in the progress bar."""
        from tqdm.auto import tqdm

        s = self.load()
        if s and (done(s["eval_returns"]) or len(s["eval_returns"]) >= max_iterations):
            return s
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self.folder.glob("replay-*.npz"):  # chunks written after the last saved state
            if not s or int(p.stem.split("-")[1]) >= len(s["eval_returns"]):
                p.unlink()
        env = _envs(self.env, self.horizon, 1)[0]
        n_obs, n_act = env.observation_space.shape[0], env.action_space.shape[0]
        st = self._resume(s, n_obs, n_act)
        bar = tqdm(total=max_iterations, initial=st["it"], desc=f"ARS {self.env}", unit="it", disable=not progress)
        last_save = time.monotonic()
        try:
            while st["it"] < max_iterations and not done(np.asarray(st["evals"])):
                self._iteration(st, rollouts, n_obs, n_act)
                bar.update(1)
                if level is not None:
                    lv = level(np.asarray(st["evals"]))
                    bar.set_postfix(level=f"{lv[-1]:.1f}", best=f"{lv.max():.1f}")
                if time.monotonic() - last_save > SAVE_SECONDS:
                    self._save(st, n_obs, n_act)
                    last_save = time.monotonic()
        finally:
            bar.close()
            self._save(st, n_obs, n_act)
        return self.load()

    def _resume(self, s, n_obs, n_act):
        rng = np.random.default_rng((self.seed, 7))
        stats = _Stats(n_obs)
        if not s:
            return {"it": 0, "M": np.zeros((n_act, n_obs)), "stats": stats, "rng": rng, "snaps": [], "evals": [],
                    "replay": [], "replay_it": [], "first": 0}
        rng.bit_generator.state = s["rng"]
        stats.count, stats.mean, stats.m2 = int(s["stats_count"]), s["stats_mean"].copy(), s["stats_m2"].copy()
        return {"it": len(s["eval_returns"]), "M": s["M"].copy(), "stats": stats, "rng": rng,
                "snaps": list(s["snapshots"]), "evals": list(s["eval_returns"]), "replay": [], "replay_it": [],
                "first": len(s["eval_returns"])}

    def _iteration(self, st, rollouts, n_obs, n_act):
        M, stats, rng, it = st["M"], st["stats"], st["rng"], st["it"]
        mu, sd = stats.mean.copy(), stats.std
        deltas = rng.standard_normal((self.directions, n_act, n_obs))
        seeds = rng.integers(2**31, size=2 * self.directions)
        W = np.stack([M + self.noise * deltas, M - self.noise * deltas], 1).reshape(-1, n_act, n_obs)
        eps = rollouts(W, mu, sd, seeds)  # order: direction k, then + / -
        shift = ALIVE_BONUS[self.env]
        r = np.array([e["rewards"].sum(dtype=np.float64) - shift * len(e["rewards"]) for e in eps])
        r = r.reshape(self.directions, 2)
        for e in eps:
            stats.update(e["observations"].astype(np.float64))
        st["replay"] += eps
        st["replay_it"] += [it] * len(eps)
        best = np.argsort(-r.max(1), kind="stable")[: self.top]
        sigma = r[best].std() + 1e-8
        M = M + self.step_size / (self.top * sigma) * np.einsum("k,kij->ij", r[best, 0] - r[best, 1], deltas[best])
        mu, sd = stats.mean.copy(), stats.std
        ev = rollouts(M[None], mu, sd, [10_000 + it])[0]  # fixed evaluation seeds, no noise
        st["snaps"].append(np.concatenate([M.ravel(), mu, sd]))
        st["evals"].append(float(ev["rewards"].sum(dtype=np.float64)))
        st["M"], st["it"] = M, it + 1

    def _save(self, st, n_obs, n_act):
        """Write the new replay chunk, then the state (atomically, last: it is what makes a chunk count)."""
        if st["replay"]:
            lens = np.array([len(e["rewards"]) for e in st["replay"]])
            chunk = {k: np.concatenate([e[k] for e in st["replay"]]) for k in KEYS}
            p = self.folder / f"replay-{st['first']:06d}-{st['it'] - 1:06d}.npz"
            _atomic_savez(p, rollout_iteration=np.array(st["replay_it"]), rollout_lengths=lens, **chunk)
            st["replay"], st["replay_it"], st["first"] = [], [], st["it"]
        if not st["evals"]:
            return
        stats = st["stats"]
        _atomic_savez(self.folder / "state.npz", snapshots=np.array(st["snaps"]), eval_returns=np.array(st["evals"]),
                      M=st["M"], stats_count=np.array(stats.count), stats_mean=stats.mean, stats_m2=stats.m2,
                      rng=np.array(json.dumps(st["rng"].bit_generator.state)), n_obs=np.array(n_obs),
                      n_act=np.array(n_act))


def _atomic_savez(path: Path, **arrays):
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
