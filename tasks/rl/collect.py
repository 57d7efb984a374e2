"""Collect D4RL-kind datasets locally: gymnasium MuJoCo v5 + behaviour policies trained by ARS.

The D4RL files cannot be downloaded everywhere, so mincore makes datasets of the same layout and
kinds (Fu et al. 2020) with behaviour policies from Augmented Random Search (Mania et al. 2018, ARS
V2: linear policy a = clip(M (s - mu) / sigma, -1, 1) on running-normalised states; each iteration
tries N directions +-noise, keeps the best b by max(r+, r-), M += step / (b sigma_R) sum (r+ - r-) delta;
hopper / walker2d subtract the alive bonus during training, as in the ARS paper):
    random         uniform random actions
    medium         rollouts of the first ARS snapshot whose D4RL-normalised evaluation return reaches
                   `medium_fraction` (1/3) of the best one reached
    medium-replay  every training rollout ARS made up to and including that snapshot's iteration
    medium-expert  medium plus as many transitions from the best snapshot
Behaviour rollouts add Gaussian action noise (`action_noise`) like D4RL's stochastic SAC policies.
One ARS run (cached in the rl/ folder of mincore.tasks.cache_dir()) serves all kinds of an env/seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cache_dir as user_cache
from . import data as rl_data

__all__ = ["ENVS", "KINDS", "CollectConfig", "require_gym", "make_env", "collect", "cache_dir", "train_ars"]

ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
KINDS = ("random", "medium", "medium-replay", "medium-expert")
ALIVE_BONUS = {"halfcheetah": 0.0, "hopper": 1.0, "walker2d": 1.0}


def require_gym():
    """gymnasium with MuJoCo, or a RuntimeError saying how to install it."""
    try:
        import gymnasium
        import mujoco  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"offline-RL collection and evaluation need the MuJoCo simulators ({e}); install "
                           "them with: pip install 'mincore[rl]'  (gymnasium[mujoco])") from None
    return gymnasium


def make_env(env: str, horizon: int = 1000):
    if env not in ENVS:
        raise ValueError(f"env: unknown {env!r}; expected one of {', '.join(ENVS)}")
    import warnings

    gym = require_gym()
    _route_mujoco_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(ENVS[env], max_episode_steps=horizon)


def _route_mujoco_warnings():
    """MuJoCo's C warnings go to MUJOCO_LOG.TXT in the working directory by default; send them to
    Python's warnings instead (HalfCheetah's XML triggers a harmless 'settotalmass' deprecation)."""
    import warnings

    import mujoco

    def warn(msg):
        if "settotalmass" not in msg:
            warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)
    if hasattr(mujoco, "set_mju_user_warning"):
        mujoco.set_mju_user_warning(warn)


@dataclass(frozen=True)
class CollectConfig:
    env: str = "halfcheetah"       # halfcheetah | hopper | walker2d
    kind: str = "medium-replay"    # random | medium | medium-replay | medium-expert
    seed: int = 0                  # ARS directions, environment resets and action noise
    ars_iterations: int = 60       # ARS training iterations (2 * directions + 1 rollouts each)
    directions: int = 8            # N: perturbation directions per iteration
    top: int = 4                   # b: best directions used in the update
    step_size: float = 0.02        # alpha
    noise: float = 0.03            # nu: perturbation scale
    horizon: int = 1000            # episode time limit (steps)
    transitions: int = 100_000     # transitions for random / medium (and per half of medium-expert)
    medium_fraction: float = 1 / 3  # medium = first snapshot reaching this fraction of the best score
    action_noise: float = 0.1      # std of Gaussian noise on behaviour actions (medium, expert)

    def validate(self):
        if self.env not in ENVS:
            raise ValueError(f"env: unknown {self.env!r}; expected one of {', '.join(ENVS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: unknown {self.kind!r}; expected one of {', '.join(KINDS)}")
        if min(self.ars_iterations, self.directions, self.top, self.horizon, self.transitions) < 1 \
                or self.top > self.directions:
            raise ValueError("ars_iterations, directions, horizon, transitions must be >= 1 and "
                             f"1 <= top <= directions; got {self}")


def cache_dir() -> Path:
    """The rl/ folder of the per-user cache (mincore.tasks.cache_dir), created when missing."""
    d = user_cache("rl")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


class _Stats:
    """Running mean / std of states (Welford, merged per batch), as ARS V2."""

    def __init__(self, n):
        self.count, self.mean, self.m2 = 0, np.zeros(n), np.zeros(n)

    def update(self, x):
        n, mu = len(x), x.mean(0)
        if n == 0:
            return
        d, tot = mu - self.mean, self.count + n
        self.m2 += ((x - mu) ** 2).sum(0) + d ** 2 * self.count * n / tot
        self.mean += d * n / tot
        self.count = tot

    @property
    def std(self):
        return np.sqrt(self.m2 / self.count) + 1e-2 if self.count > 1 else np.ones_like(self.mean)


def rollout(env, act, seed):
    """One episode: act(obs) -> action. Returns D4RL arrays of the episode and its return."""
    o, _ = env.reset(seed=int(seed))
    obs, acts, rews, terms, touts = [], [], [], [], []
    while True:
        a = np.asarray(act(o), np.float32)
        o2, r, term, trunc, _ = env.step(a)
        obs.append(o), acts.append(a), rews.append(r), terms.append(term), touts.append(trunc and not term)
        o = o2
        if term or trunc:
            break
    ep = {"observations": np.asarray(obs, np.float32), "actions": np.asarray(acts, np.float32),
          "rewards": np.asarray(rews, np.float32), "terminals": np.asarray(terms), "timeouts": np.asarray(touts)}
    return ep, float(ep["rewards"].sum())


def _concat(eps):
    return {k: np.concatenate([e[k] for e in eps]) for k in rl_data.KEYS}


def _linear(M, mu, sd, noise=0.0, rng=None):
    def act(o):
        a = M @ ((o - mu) / sd)
        if noise:
            a = a + noise * rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0)
    return act


def train_ars(cfg: CollectConfig, progress: bool = True) -> dict:
    """ARS V2 (cached): per-iteration snapshots (M, mu, sigma), evaluation returns, training rollouts."""
    from tqdm.auto import tqdm

    fields = {k: getattr(cfg, k) for k in ("env", "seed", "ars_iterations", "directions", "top", "step_size",
                                           "noise", "horizon")}
    path = cache_dir() / f"ars-{cfg.env}-{_key(fields)}.npz"
    if path.exists():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    env, rng = make_env(cfg.env, cfg.horizon), np.random.default_rng((cfg.seed, 7))
    n_obs, n_act = env.observation_space.shape[0], env.action_space.shape[0]
    M, stats, shift = np.zeros((n_act, n_obs)), _Stats(n_obs), ALIVE_BONUS[cfg.env]
    snaps, evals, replay, it_of = [], [], [], []
    for it in tqdm(range(cfg.ars_iterations), desc=f"ARS {cfg.env}", disable=not progress, unit="it"):
        mu, sd = stats.mean.copy(), stats.std
        deltas = rng.standard_normal((cfg.directions, n_act, n_obs))
        r = np.zeros((cfg.directions, 2))
        for k in range(cfg.directions):
            for j, sign in enumerate((1.0, -1.0)):
                ep, _ = rollout(env, _linear(M + sign * cfg.noise * deltas[k], mu, sd), rng.integers(2**31))
                r[k, j] = ep["rewards"].sum() - shift * len(ep["rewards"])
                replay.append(ep), it_of.append(it)
                stats.update(ep["observations"].astype(np.float64))
        best = np.argsort(-r.max(1))[: cfg.top]
        sigma = r[best].std() + 1e-8
        M = M + cfg.step_size / (cfg.top * sigma) * np.einsum("k,kij->ij", r[best, 0] - r[best, 1], deltas[best])
        mu, sd = stats.mean.copy(), stats.std
        _, ret = rollout(env, _linear(M, mu, sd), 10_000 + it)  # fixed evaluation seeds
        snaps.append(np.concatenate([M.ravel(), mu, sd])), evals.append(ret)
    data = _concat(replay)
    lens = np.array([len(e["rewards"]) for e in replay])
    out = {"snapshots": np.array(snaps), "eval_returns": np.array(evals), "n_obs": np.array(n_obs),
           "n_act": np.array(n_act), "rollout_iteration": np.array(it_of), "rollout_lengths": lens, **data}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def _episodes(env, act, transitions, rng, desc, progress):
    """Episodes of policy `act` until `transitions` steps are collected (whole episodes)."""
    from tqdm.auto import tqdm

    eps, n = [], 0
    with tqdm(total=transitions, desc=desc, unit="step", disable=not progress) as bar:
        while n < transitions:
            ep, _ = rollout(env, act, rng.integers(2**31))
            eps.append(ep)
            n += len(ep["rewards"])
            bar.update(min(len(ep["rewards"]), transitions - bar.n))
    return eps


def _policy_rollouts(cfg, env, snap, n_obs, n_act, transitions, rng, desc, progress):
    M, mu, sd = snap[: n_act * n_obs].reshape(n_act, n_obs), snap[n_act * n_obs:-n_obs], snap[-n_obs:]
    return _episodes(env, _linear(M, mu, sd, cfg.action_noise, rng), transitions, rng, desc, progress)


def _replay_episodes(ars, upto_iteration):
    ends = np.cumsum(ars["rollout_lengths"])
    keep = np.flatnonzero(ars["rollout_iteration"] <= upto_iteration)
    starts = ends - ars["rollout_lengths"]
    return [{k: ars[k][starts[i]:ends[i]] for k in rl_data.KEYS} for i in keep]


def collect(cfg: CollectConfig, out=None, *, progress: bool = True) -> Path:
    """Make (or reuse, when `out` holds a dataset of the same settings) a D4RL-layout file; its path."""
    cfg.validate()
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    out = Path(out) if out is not None else cache_dir() / f"{cfg.env}-{cfg.kind}-{_key(dataclasses.asdict(cfg))}.h5"
    if out.exists():  # read as any file given to us: it may be a FIFO or a crafted HDF5 file
        from mincore.autograd import h5safe

        with h5safe.open_file(out, what="D4RL-layout file") as f:
            if h5safe.read_attr(f, "collect_config", source=str(out)) == settings:
                return out
    env, rng = make_env(cfg.env, cfg.horizon), np.random.default_rng((cfg.seed, 11))
    attrs = {"env": cfg.env, "env_id": ENVS[cfg.env], "kind": cfg.kind, "collect_config": settings,
             "source": "mincore rl collect (gymnasium MuJoCo v5)"}
    if cfg.kind == "random":
        lo, hi = env.action_space.low, env.action_space.high
        eps = _episodes(env, lambda o: rng.uniform(lo, hi), cfg.transitions, rng, "random", progress)
        attrs["how"] = "uniform random actions in the action box"
    else:
        ars = train_ars(cfg, progress)
        n_obs, n_act = int(ars["n_obs"]), int(ars["n_act"])
        score = rl_data.normalized_score(cfg.env, ars["eval_returns"])
        best_it = int(np.argmax(score))
        med_it = int(np.flatnonzero(score >= cfg.medium_fraction * score[best_it])[0])
        attrs.update(ars_eval_returns=ars["eval_returns"], medium_iteration=med_it, best_iteration=best_it,
                     medium_eval_return=float(ars["eval_returns"][med_it]),
                     best_eval_return=float(ars["eval_returns"][best_it]))
        if cfg.kind == "medium-replay":
            eps = _replay_episodes(ars, med_it)
            attrs["how"] = f"every ARS training rollout of iterations 0..{med_it} (the medium policy's)"
        else:
            eps = _policy_rollouts(cfg, env, ars["snapshots"][med_it], n_obs, n_act, cfg.transitions, rng,
                                   "medium", progress)
            attrs["how"] = (f"rollouts of ARS iteration {med_it}'s linear policy (first to reach "
                            f"{cfg.medium_fraction:.3g} of the best normalised score), action noise {cfg.action_noise}")
            if cfg.kind == "medium-expert":
                eps += _policy_rollouts(cfg, env, ars["snapshots"][best_it], n_obs, n_act, cfg.transitions, rng,
                                        "expert", progress)
                attrs["how"] += f"; plus as many from the best policy (iteration {best_it})"
    attrs["behaviour_returns"] = np.array([float(e["rewards"].sum()) for e in eps])
    rl_data.save(out, _concat(eps), attrs)
    return out
