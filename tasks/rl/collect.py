"""Collect D4RL-kind datasets locally: gymnasium MuJoCo v5 + behaviour policies trained by ARS.

The D4RL files cannot be downloaded everywhere, so mincore makes datasets of the same layout and
kinds (Fu et al. 2020) with behaviour policies from Augmented Random Search V2-t (tasks/rl/ars.py:
linear policies on running-normalised states), at D4RL's levels in absolute terms:
    random         uniform random actions
    medium         rollouts of the first ARS snapshot whose noise-free evaluation return reaches the
                   medium level: `medium_level` (D4RL-normalised; default MEDIUM_LEVEL[env], the mean
                   normalised episode return of D4RL's v2 medium dataset of that environment)
    medium-replay  every training rollout ARS made up to and including that snapshot's iteration
    medium-expert  medium plus as many transitions from the expert: the best-evaluated snapshot of the
                   run continued `expert_iterations` iterations past the medium one (a fixed count,
                   so the expert's level is what ARS reaches then; the file records it)
ARS stops as soon as what the kind needs exists: the medium snapshot (medium, medium-replay), then
`expert_iterations` more (medium-expert). If the medium level is not reached within `ars_iterations`
iterations, collection stops with an error naming the best level reached (the run is cached, so a
larger `ars_iterations` continues it). Behaviour rollouts add Gaussian action noise (`action_noise`)
like D4RL's stochastic SAC policies; that lowers the dataset's mean return below the noise-free
evaluation return that picked the snapshot (the default 0.05 is half the usual 0.1 for that reason: an
occasional episode in which the linear policy flips the body over costs a whole episode's return).
One ARS run (cached in the rl/ folder of mincore.tasks.cache_dir()) serves all kinds of an env / seed /
ARS settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cache_dir as user_cache
from . import ars
from . import data as rl_data

__all__ = ["ENVS", "KINDS", "CollectConfig", "require_gym", "make_env", "collect", "cache_dir", "train_ars",
           "MEDIUM_LEVEL", "ARS_SETTINGS", "default_workers"]

ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
KINDS = ("random", "medium", "medium-replay", "medium-expert")


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


# D4RL-normalised mean episode return of D4RL's v2 medium datasets (halfcheetah-medium-v2 40.7,
# hopper-medium-v2 44.3, walker2d-medium-v2 62.1: the dataset rows tabulated with the D4RL v2 results,
# e.g. in the CORL benchmark, Tarasov et al. 2022); the first snapshot whose noise-free evaluation reaches it
# is the medium policy
MEDIUM_LEVEL = {"halfcheetah": 40.7, "hopper": 44.3, "walker2d": 62.1}
# ARS V2-t hyperparameters per environment from Mania et al. 2018 (Table 9, the MuJoCo v1 tasks)
ARS_SETTINGS = {"halfcheetah": {"directions": 32, "top": 4, "step_size": 0.02, "noise": 0.03},
                "hopper": {"directions": 8, "top": 4, "step_size": 0.01, "noise": 0.025},
                "walker2d": {"directions": 40, "top": 30, "step_size": 0.03, "noise": 0.025}}


@dataclass(frozen=True)
class CollectConfig:
    env: str = "halfcheetah"       # halfcheetah | hopper | walker2d
    kind: str = "medium-replay"    # random | medium | medium-replay | medium-expert
    seed: int = 0                  # ARS directions, environment resets and action noise
    ars_iterations: int = 1000     # at most this many ARS iterations to reach the medium level
    # ARS hyperparameters; None: ARS_SETTINGS[env]
    directions: int | None = None  # N: perturbation directions per iteration (2N rollouts each)
    top: int | None = None         # b: best directions used in the update
    step_size: float | None = None  # alpha
    noise: float | None = None     # nu: perturbation scale
    horizon: int = 1000            # episode time limit (steps)
    transitions: int = 100_000     # transitions for random / medium (and per half of medium-expert)
    medium_level: float | None = None  # D4RL-normalised evaluation return of the medium snapshot (None: MEDIUM_LEVEL)
    expert_iterations: int = 100   # medium-expert: ARS iterations past the medium snapshot; expert = best of them
    # std of Gaussian noise on behaviour actions (medium, expert). The linear ARS policies are fragile: at
    # 0.1 about 30 % of halfcheetah episodes of the medium policy flip over (dataset mean normalised 24 for a
    # noise-free 41), at 0.05 about 7 % (mean 37)
    action_noise: float = 0.05

    def validate(self):
        if self.env not in ENVS:
            raise ValueError(f"env: unknown {self.env!r}; expected one of {', '.join(ENVS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind: unknown {self.kind!r}; expected one of {', '.join(KINDS)}")
        a = self.ars
        if min(self.ars_iterations, a["directions"], a["top"], self.horizon, self.transitions,
               self.expert_iterations) < 1 or a["top"] > a["directions"]:
            raise ValueError("ars_iterations, directions, horizon, transitions, expert_iterations must be >= 1 "
                             f"and 1 <= top <= directions; got {self}")
        if not (a["step_size"] > 0 and a["noise"] > 0):
            raise ValueError(f"step_size, noise: expected > 0; got {a['step_size']}, {a['noise']}")
        if self.medium_level is not None and not np.isfinite(self.medium_level):
            raise ValueError(f"medium_level: expected a finite D4RL-normalised level or None; got {self.medium_level}")
        if not (np.isfinite(self.action_noise) and self.action_noise >= 0):
            raise ValueError(f"action_noise: expected a finite std >= 0; got {self.action_noise}")

    @property
    def ars(self) -> dict:
        """The ARS hyperparameters in force: the given ones, else ARS_SETTINGS[env]'s."""
        given = {k: getattr(self, k) for k in ARS_SETTINGS[self.env]}
        return {k: ARS_SETTINGS[self.env][k] if v is None else v for k, v in given.items()}

    @property
    def level(self) -> float:
        """The medium level in force (D4RL-normalised)."""
        return MEDIUM_LEVEL[self.env] if self.medium_level is None else float(self.medium_level)


def cache_dir() -> Path:
    """The rl/ folder of the per-user cache (mincore.tasks.cache_dir), created when missing."""
    d = user_cache("rl")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _key(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def default_workers() -> int:
    """Processes for the lockstep rollouts: the cores other work leaves free (mincore.backend.free_cpus),
    at most 2; a second process on a busy core only adds switching."""
    from mincore.backend import free_cpus

    return min(2, free_cpus())


def ars_run(cfg: CollectConfig) -> ars.ARSRun:
    """The cached ARS run of cfg (its folder is keyed by env, seed and the ARS hyperparameters)."""
    fields = {"env": cfg.env, "seed": cfg.seed, "horizon": cfg.horizon, **cfg.ars}
    return ars.ARSRun(**fields, folder=cache_dir() / f"ars-{cfg.env}-{_key(fields)}")


def _medium_iteration(cfg, evals):
    hit = np.flatnonzero(rl_data.normalized_score(cfg.env, evals) >= cfg.level)
    return int(hit[0]) if len(hit) else None


def train_ars(cfg: CollectConfig, progress: bool = True, *, expert: bool = False, workers: int | None = None) -> dict:
    """ARS V2-t (cached, resumed when it must go further) until the medium snapshot exists (and, with
    `expert`, `expert_iterations` iterations past it): the run's state (ars.ARSRun.load) plus
    `medium_iteration` and, with `expert`, `best_iteration`. A ValueError when the medium level is not
    reached within cfg.ars_iterations."""
    run = ars_run(cfg)
    level = lambda ev: rl_data.normalized_score(cfg.env, ev)  # noqa: E731
    with ars.Rollouts(cfg.env, cfg.horizon, workers or default_workers()) as roll:
        s = run.train(lambda ev: _medium_iteration(cfg, ev) is not None, cfg.ars_iterations, roll, level, progress)
        med = _medium_iteration(cfg, s["eval_returns"][: cfg.ars_iterations])
        if med is None:
            ev = s["eval_returns"][: cfg.ars_iterations]
            best = int(np.argmax(ev))
            raise ValueError(
                f"ars_iterations: ARS did not reach the medium level {cfg.level:.1f} (D4RL-normalised) in "
                f"{len(ev)} iterations; the best evaluation was {float(level(ev[best])):.1f} (return "
                f"{ev[best]:.0f}, iteration {best}); raise --ars-iterations (the run is cached and continues) "
                "or lower the medium level")
        end = med + 1 + cfg.expert_iterations
        if expert:
            s = run.train(lambda ev: len(ev) >= end, end, roll, level, progress)
    s["medium_iteration"] = med
    if expert:
        s["best_iteration"] = int(np.argmax(s["eval_returns"][:end]))
    return s


def rollout(env, act, seed):
    """One episode: act(obs) -> action (env: a gymnasium env with its time limit). Returns D4RL arrays
    of the episode and its return: the sequential reference for ars.lockstep."""
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


def _random_episodes(cfg, rng, progress):
    from tqdm.auto import tqdm

    env = make_env(cfg.env, cfg.horizon)
    lo, hi = env.action_space.low, env.action_space.high
    eps, n = [], 0
    with tqdm(total=cfg.transitions, desc="random", unit="step", disable=not progress) as bar:
        while n < cfg.transitions:
            ep, _ = rollout(env, lambda o: rng.uniform(lo, hi), rng.integers(2**31))
            eps.append(ep)
            n += len(ep["rewards"])
            bar.update(min(len(ep["rewards"]), cfg.transitions - bar.n))
    return eps


def _policy_rollouts(cfg, roll, snap, n_obs, n_act, rng, desc, progress):
    """Noisy rollouts of snapshot `snap`, whole episodes, in lockstep batches of 2 * directions, until
    cfg.transitions steps are collected."""
    from tqdm.auto import tqdm

    M, mu, sd = ars.policy_of(snap, n_obs, n_act)
    eps, n, batch = [], 0, 2 * cfg.ars["directions"]
    with tqdm(total=cfg.transitions, desc=desc, unit="step", disable=not progress) as bar:
        while n < cfg.transitions:
            seeds = rng.integers(2**31, size=min(batch, -(-(cfg.transitions - n) // cfg.horizon)))
            for ep in roll(np.broadcast_to(M, (len(seeds), *M.shape)), mu, sd, seeds, cfg.action_noise):
                if n < cfg.transitions:  # whole episodes, in seed order
                    eps.append(ep)
                    n += len(ep["rewards"])
            bar.update(min(n, cfg.transitions) - bar.n)
    return eps


def collect(cfg: CollectConfig, out=None, *, progress: bool = True, workers: int | None = None) -> Path:
    """Make (or reuse, when `out` holds a dataset of the same settings) a D4RL-layout file; its path.
    `workers`: processes for the rollouts (default: default_workers()); the file is the same for any."""
    cfg.validate()
    settings = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    out = Path(out) if out is not None else cache_dir() / f"{cfg.env}-{cfg.kind}-{_key(dataclasses.asdict(cfg))}.h5"
    if out.exists():  # read as any file given to us: it may be a FIFO or a crafted HDF5 file
        from mincore.autograd import h5safe

        with h5safe.open_file(out, what="D4RL-layout file") as f:
            if h5safe.read_attr(f, "collect_config", source=str(out)) == settings:
                return out
    rng = np.random.default_rng((cfg.seed, 11))
    attrs = {"env": cfg.env, "env_id": ENVS[cfg.env], "kind": cfg.kind, "collect_config": settings,
             "source": "mincore rl collect (gymnasium MuJoCo v5)"}
    if cfg.kind == "random":
        eps = _random_episodes(cfg, rng, progress)
        attrs["how"] = "uniform random actions in the action box"
    else:
        eps = _from_ars(cfg, rng, attrs, progress, workers)
    returns = np.array([float(e["rewards"].sum()) for e in eps])
    if returns.nbytes <= 60_000:  # an HDF5 attribute holds at most 64 KiB (medium-replay can have more episodes)
        attrs["behaviour_returns"] = returns
    attrs["behaviour_mean_return"] = float(returns.mean())
    attrs["behaviour_normalized_mean"] = float(rl_data.normalized_score(cfg.env, returns.mean()))
    rl_data.save(out, _concat(eps), attrs)
    return out


def _from_ars(cfg, rng, attrs, progress, workers):
    """Episodes of the medium kinds, attributes saying which snapshots at which levels."""
    s = train_ars(cfg, progress, expert=cfg.kind == "medium-expert", workers=workers)
    n_obs, n_act, med = int(s["n_obs"]), int(s["n_act"]), s["medium_iteration"]
    ev, norm = s["eval_returns"], lambda r: float(rl_data.normalized_score(cfg.env, r))
    attrs.update(ars_eval_returns=ev[: med + 1 + (cfg.expert_iterations if cfg.kind == "medium-expert" else 0)],
                 medium_iteration=med, medium_eval_return=float(ev[med]), medium_level=cfg.level,
                 medium_eval_normalized=norm(ev[med]))
    if cfg.kind == "medium-replay":
        attrs["how"] = f"every ARS training rollout of iterations 0..{med} (the medium policy's)"
        return run_replay(cfg, med)
    with ars.Rollouts(cfg.env, cfg.horizon, workers or default_workers()) as roll:
        eps = _policy_rollouts(cfg, roll, s["snapshots"][med], n_obs, n_act, rng, "medium", progress)
        attrs["how"] = (f"rollouts of ARS iteration {med}'s linear policy (the first whose evaluation reached "
                        f"the D4RL-normalised level {cfg.level:.1f}), action noise {cfg.action_noise}")
        if cfg.kind == "medium-expert":
            best = s["best_iteration"]
            eps += _policy_rollouts(cfg, roll, s["snapshots"][best], n_obs, n_act, rng, "expert", progress)
            attrs.update(best_iteration=best, best_eval_return=float(ev[best]), expert_level=norm(ev[best]))
            attrs["how"] += (f"; plus as many from the expert: the best evaluated policy up to "
                             f"{cfg.expert_iterations} iterations past it (iteration {best}, "
                             f"level {norm(ev[best]):.1f})")
    return eps


def run_replay(cfg: CollectConfig, upto: int) -> list[dict]:
    """The cached ARS run's training rollouts of iterations 0..upto."""
    return ars_run(cfg).replay(upto)
