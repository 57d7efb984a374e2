"""D4RL-layout offline RL data: read/write, episode splits, returns-to-go, normalisation, K-windows.

A D4RL MuJoCo file is HDF5 with datasets (N transitions)
    observations (N, obs)  actions (N, act)  rewards (N,)  terminals (N,)  timeouts (N,)
(rewards / terminals / timeouts may also be stored as (N, 1)). Episode i is the run of steps ending
at a terminal (the environment ended it) or a timeout (the time limit cut it); a trailing run with
neither flag is kept as a last, truncated episode. Returns-to-go are undiscounted:
R_t = r_t + r_{t+1} + ... + r_{end-1} within an episode (Chen et al. 2021, Decision Transformer).

Windows (Decision Transformer's sampling, right-padded for a causal RNN): an episode is drawn with
probability proportional to its length, a start step s uniformly in it, and steps s .. s+K-1 are
returned; past the episode's end the window is zero-padded with mask 0. Padding on the right keeps
the real tokens first, so a causal recurrence gives the real tokens exactly the outputs it would
give without any padding (left padding would feed zeros into the state before them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["KEYS", "REF_MIN_MAX", "normalized_score", "Dataset", "load", "save", "from_arrays",
           "split_episodes", "returns_to_go"]

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
# D4RL's reference returns (random policy, expert policy) for the normalised score
REF_MIN_MAX = {"halfcheetah": (-280.178953, 12135.0), "hopper": (-20.272305, 3234.3),
               "walker2d": (1.629008, 4592.3)}


def normalized_score(env: str, returns):
    """100 * (R - min) / (max - min) with D4RL's reference (min, max) for `env`."""
    if env not in REF_MIN_MAX:
        raise ValueError(f"env: no D4RL reference scores for {env!r}; known: {', '.join(REF_MIN_MAX)}")
    lo, hi = REF_MIN_MAX[env]
    return 100.0 * (np.asarray(returns, np.float64) - lo) / (hi - lo)


def split_episodes(terminals, timeouts) -> list[tuple[int, int]]:
    """[(start, end)) index ranges of the episodes: each ends after a terminal or timeout step."""
    done = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool))
    ends = list(done + 1)
    if not ends or ends[-1] != len(terminals):
        ends.append(len(terminals))  # trailing run without a flag: a truncated last episode
    starts = [0] + ends[:-1]
    return [(s, e) for s, e in zip(starts, ends, strict=True) if e > s]


def returns_to_go(rewards, episodes) -> np.ndarray:
    """Undiscounted return-to-go of every step, episode by episode (float64)."""
    r = np.asarray(rewards, np.float64)
    rtg = np.empty_like(r)
    for s, e in episodes:
        rtg[s:e] = np.cumsum(r[s:e][::-1])[::-1]
    return rtg


def _column(name, a, n):
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name}: expected shape ({n},) or ({n}, 1), got {a.shape}")
    return a


def _check(arrays: dict, source: str) -> dict:
    """Refuse malformed data with a message naming the key and the problem."""
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{source}: missing D4RL key(s) {', '.join(missing)} (need {', '.join(KEYS)})")
    obs, act = np.asarray(arrays["observations"]), np.asarray(arrays["actions"])
    n = len(obs)
    if obs.ndim != 2 or act.ndim != 2:
        raise ValueError(f"{source}: observations and actions must be 2-D (N, dim); got {obs.shape}, "
                         f"{act.shape}")
    out = {"observations": obs.astype(np.float32), "actions": act.astype(np.float32)}
    for k in ("rewards", "terminals", "timeouts"):
        out[k] = _column(f"{source}: {k}", arrays[k], n)
    for k, a in out.items():
        if len(a) != n:
            raise ValueError(f"{source}: {k} has {len(a)} rows but observations has {n} (lengths must match)")
    if n == 0:
        raise ValueError(f"{source}: the dataset is empty (0 transitions)")
    for k in ("observations", "actions", "rewards"):
        bad = ~np.isfinite(out[k])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{source}: {k} has {int(bad.sum())} non-finite value(s) (NaN/inf), first at row {row}")
    out["rewards"] = out["rewards"].astype(np.float32)
    out["terminals"], out["timeouts"] = out["terminals"].astype(bool), out["timeouts"].astype(bool)
    return out


@dataclass
class Dataset:
    """Transitions of a D4RL-layout file with its episodes and statistics (see module docstring)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.episodes = split_episodes(self.terminals, self.timeouts)
        self.rtg = returns_to_go(self.rewards, self.episodes)
        self.returns = np.array([self.rtg[s] for s, _ in self.episodes])
        self.lengths = np.array([e - s for s, e in self.episodes])
        # state normalisation statistics (Decision Transformer: mean / std over all transitions)
        self.state_mean = self.observations.mean(0).astype(np.float32)
        self.state_std = (self.observations.std(0) + 1e-6).astype(np.float32)
        self._starts = np.array([s for s, _ in self.episodes])
        self._step = np.zeros(len(self.rewards), np.int64)  # timestep of each transition in its episode
        for s, e in self.episodes:
            self._step[s:e] = np.arange(e - s)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def __len__(self):
        return len(self.rewards)

    def subset(self, episode_ids) -> Dataset:
        """The dataset restricted to the given episodes (for held-out splits)."""
        idx = np.concatenate([np.arange(*self.episodes[i]) for i in episode_ids])
        return Dataset(*(getattr(self, k)[idx] for k in KEYS), attrs=dict(self.attrs))

    def summary(self) -> dict:
        return {"transitions": len(self), "episodes": len(self.episodes),
                "mean_return": float(self.returns.mean()), "best_return": float(self.returns.max()),
                "mean_length": float(self.lengths.mean())}

    def windows(self, rng, size: int, K: int, *, reward_scale: float = 1000.0, max_timestep: int = 1000,
                normalize: bool = True):
        """A batch of length-K windows: dict of
            states (size, K, obs) float32 (normalised)   actions (size, K, act) float32
            rtg (size, K, 1) float32 (/ reward_scale)    timesteps (size, K) int64 (< max_timestep)
            mask (size, K) float32 (1 real, 0 padding on the right)
        """
        p = self.lengths / self.lengths.sum()
        ep = rng.choice(len(self.episodes), size=size, p=p)
        off = (rng.random(size) * self.lengths[ep]).astype(np.int64)
        return self.gather(self._starts[ep] + off, self._starts[ep] + self.lengths[ep], K,
                           reward_scale=reward_scale, max_timestep=max_timestep, normalize=normalize)

    def gather(self, start, end, K, *, reward_scale=1000.0, max_timestep=1000, normalize=True):
        """Windows beginning at transition indices `start` (episode ends `end`); see windows()."""
        idx = np.asarray(start)[:, None] + np.arange(K)[None]
        mask = idx < np.asarray(end)[:, None]
        idx = np.where(mask, idx, 0)
        obs = self.observations[idx]
        if normalize:
            obs = (obs - self.state_mean) / self.state_std
        m = mask.astype(np.float32)
        return {"states": (obs * m[..., None]).astype(np.float32),
                "actions": self.actions[idx] * m[..., None],
                "rtg": (self.rtg[idx] / reward_scale * m)[..., None].astype(np.float32),
                "timesteps": np.minimum(self._step[idx], max_timestep - 1) * mask,
                "mask": m}


def from_arrays(arrays: dict, attrs: dict | None = None, source: str = "arrays") -> Dataset:
    return Dataset(**_check(arrays, source), attrs=dict(attrs or {}))


def load(path) -> Dataset:
    """Read a D4RL-layout HDF5 file (genuine D4RL or written by `mincore rl collect`)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        arrays = {k: f[k][()] for k in KEYS if k in f}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return from_arrays(arrays, attrs, source=str(path))


def save(path, arrays: dict, attrs: dict | None = None) -> None:
    """Write D4RL keys (checked first) plus attributes atomically (temp file + rename)."""
    import os
    from pathlib import Path

    import h5py

    data = _check(arrays, str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        for k in KEYS:
            f.create_dataset(k, data=data[k], compression="gzip" if len(data[k]) > 10000 else None)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)
