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

Files are read through mincore.autograd.h5safe (they may be damaged or crafted): a FIFO or other
non-regular file, links or raw storage outside the file, virtual datasets, dangling soft links, and
datasets declaring more bytes than the file can hold are refused before anything is read; then every
key's dtype kind and shape is checked from the file's metadata (observations / actions (N, dim >= 1)
float, rewards (N,) float, flags (N,) bool or 0 / 1 numbers, one N), and only then read. Values are
checked as for in-memory arrays (from_arrays, Dataset): finite as float32, flags exactly 0 or 1, no
masked arrays. Every refusal is a ValueError naming the file (or `source`), the key and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from mincore.autograd import h5safe

__all__ = ["KEYS", "REF_MIN_MAX", "normalized_score", "Dataset", "load", "read", "save", "from_arrays",
           "split_episodes", "returns_to_go"]

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
FLOAT_KEYS = ("observations", "actions", "rewards")   # finite real numbers
FLAG_KEYS = ("terminals", "timeouts")                  # exactly 0 or 1 each
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
    done = np.flatnonzero(_flags("terminals", terminals, "split_episodes")
                          | _flags("timeouts", timeouts, "split_episodes"))
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


def _kinds(k: str) -> str:
    """The NumPy dtype kinds accepted for key `k` (flags: bool, or 0 / 1 in integers or floats)."""
    return "f" if k in FLOAT_KEYS else "biuf"


def _require_keys(present, source: str) -> None:
    missing = [k for k in KEYS if k not in present]
    if missing:
        raise ValueError(f"{source}: missing D4RL key(s) {', '.join(missing)} (need {', '.join(KEYS)})")


def _check_layout(shapes: dict, dtypes: dict, source: str) -> int:
    """N, after checking every key's dtype kind and shape (from a file's metadata: nothing read yet)."""
    for k in KEYS:
        dt = np.dtype(dtypes[k])
        if dt.kind not in _kinds(k) or dt.subdtype is not None:
            want = "float" if k in FLOAT_KEYS else "bool, or integer / float flags of 0 and 1"
            kind = h5safe.KIND_NAMES.get(dt.kind, dt.kind)
            raise ValueError(f"{source}: {k} has dtype {dt} ({kind}), expected {want}")
    obs, act = shapes["observations"], shapes["actions"]
    if len(obs) != 2 or len(act) != 2:
        raise ValueError(f"{source}: observations and actions must be 2-D (N, dim); got {obs}, {act}")
    n = obs[0]
    for k, s in (("observations", obs), ("actions", act)):
        if s[1] < 1:
            raise ValueError(f"{source}: {k} has 0 columns (shape {s}); expected at least one")
    for k in ("rewards", *FLAG_KEYS):
        s = shapes[k]
        if not (len(s) == 1 or (len(s) == 2 and s[1] == 1)):
            raise ValueError(f"{source}: {k}: expected shape ({n},) or ({n}, 1), got {s}")
    for k in KEYS:
        if shapes[k][0] != n:
            raise ValueError(f"{source}: {k} has {shapes[k][0]} rows but observations has {n} (lengths must match)")
    if n == 0:
        raise ValueError(f"{source}: the dataset is empty (0 transitions)")
    return n


def _where(bad: np.ndarray) -> str:
    first = np.argwhere(bad)[0]
    return f"row {first[0]}" + (f", column {first[1]}" if len(first) > 1 else "")


def _check(arrays: dict, source: str) -> dict:
    """The five arrays as float32 / bool 1-D or 2-D arrays, after refusing malformed ones with a message
    naming `source`, the key and the problem (see _check_layout; masked arrays; non-finite values;
    flags other than 0 / 1)."""
    _require_keys(arrays, source)
    for k in KEYS:  # np.asarray would drop the mask and keep the masked-out values
        if isinstance(arrays[k], np.ma.MaskedArray):
            raise ValueError(f"{source}: {k} is a masked array; pass a plain array (fill or drop the masked "
                             f"steps first)")
    a = {k: np.asarray(arrays[k]) for k in KEYS}
    _check_layout({k: v.shape for k, v in a.items()}, {k: v.dtype for k, v in a.items()}, source)
    out = {k: (a[k][:, 0] if a[k].ndim == 2 and k not in ("observations", "actions") else a[k]) for k in KEYS}
    for k in FLOAT_KEYS:
        with np.errstate(over="ignore"):  # values beyond float32's range become inf: refused just below
            out[k] = out[k].astype(np.float32)
        bad = ~np.isfinite(out[k])
        if bad.any():
            raise ValueError(f"{source}: {k} has {int(bad.sum())} non-finite value(s) as float32 (NaN, inf or "
                             f"beyond float32's range), first at {_where(bad)}")
    for k in FLAG_KEYS:
        out[k] = _flags(k, out[k], source)
    return out


def _flags(name: str, a, source: str) -> np.ndarray:
    """Episode-end flags as bool, refusing any value but 0 / 1 (NaN or 0.5 would silently count as True)."""
    if isinstance(a, np.ma.MaskedArray):
        raise ValueError(f"{source}: {name} is a masked array; pass a plain array")
    a = np.asarray(a)
    bad = (a != 0) & (a != 1)  # NaN compares unequal to both
    if bad.any():
        row = int(np.argmax(bad.ravel()))
        raise ValueError(f"{source}: {name} must hold only 0 or 1 (episode-end flags); {int(bad.sum())} value(s) "
                         f"do not, first at row {row}: {a.ravel()[row].item()!r}")
    return a.astype(bool)


@dataclass
class Dataset:
    """Transitions of a D4RL-layout file with its episodes and statistics (see module docstring)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    attrs: dict = field(default_factory=dict)
    source: str = field(default="arrays", compare=False)  # names the data in error messages

    def __post_init__(self):
        for k, v in _check({k: getattr(self, k) for k in KEYS}, self.source).items():
            setattr(self, k, v)
        env = self.attrs.get("env")
        if env is not None and not isinstance(env, str):
            raise ValueError(f"{self.source}: attribute env is {type(env).__name__} {env!r}, expected the "
                             f"environment's name as text (e.g. 'hopper')")
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
        return Dataset(*(getattr(self, k)[idx] for k in KEYS), attrs=dict(self.attrs), source=self.source)

    def best_episodes(self, fraction: float) -> np.ndarray:
        """Ids (in file order) of the highest-return episodes, added best first while their steps stay
        within `fraction` of all steps, at least one: the data of %BC (Decision Transformer's
        percentile behaviour cloning, Chen et al. 2021, whose code selects exactly so)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: expected a share of the steps in (0, 1], got {fraction!r}")
        order = np.argsort(-self.returns, kind="stable")
        budget = max(int(fraction * len(self)), 1)
        within = np.cumsum(self.lengths[order]) <= budget
        within[0] = True
        return np.sort(order[: int(np.argmin(within)) if not within.all() else len(order)])

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
    """A Dataset of in-memory arrays (checked as a file's are; masked arrays refused)."""
    _require_keys(arrays, source)
    return Dataset(**{k: arrays[k] for k in KEYS}, attrs=dict(attrs or {}), source=source)


def load(path) -> Dataset:
    """Read a D4RL-layout HDF5 file (genuine D4RL or written by `mincore rl collect`) through
    mincore.autograd.h5safe: a FIFO or other non-regular file, links or storage outside the file,
    wrong kinds or shapes and sizes the file cannot hold are refused (ValueError naming the file)
    before anything is read; then the values are checked as from_arrays does."""
    source = str(path)
    with h5safe.open_file(path, what="D4RL-layout file") as f:
        meta = _declared(f, source)
        _check_layout({k: m[0] for k, m in meta.items()}, {k: m[1] for k, m in meta.items()}, source)
        arrays = {k: h5safe.read_dataset(f, k, source=source, kinds=_kinds(k), shape=meta[k][0]) for k in KEYS}
        attrs = h5safe.read_attrs(f, source=source)
    return Dataset(**arrays, attrs=attrs, source=source)


def _declared(f, source: str) -> dict:
    """{key: (shape, dtype)} of the D4RL datasets as the file declares them (nothing read yet)."""
    _require_keys(f, source)
    meta = {}
    for k in KEYS:
        try:
            d = f.get(k)
            if not isinstance(d, h5py.Dataset):
                raise ValueError(f"{source}: /{k} is a {type(d).__name__}, expected a dataset")
            if d.shape is None:
                raise ValueError(f"{source}: dataset /{k} has no elements at all (null dataspace), expected an array")
            meta[k] = (tuple(int(n) for n in d.shape), d.dtype)
        except (OSError, RuntimeError, KeyError, TypeError) as e:
            raise ValueError(f"{source}: dataset /{k} cannot be read; the file is damaged or corrupted ({e})") from e
    return meta


def read(spec) -> Dataset:
    """A D4RL-layout HDF5 file (load), or a local Minari dataset named `minari:ID` (tasks/rl/minari_io.py,
    which imports the minari package only then)."""
    from . import minari_io

    return minari_io.load(spec) if minari_io.is_minari(spec) else load(spec)


def save(path, arrays: dict, attrs: dict | None = None) -> None:
    """Write D4RL keys (checked first) plus attributes atomically (temp file + rename)."""
    import os
    from pathlib import Path

    data = _check(arrays, str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        for k in KEYS:
            f.create_dataset(k, data=data[k], compression="gzip" if len(data[k]) > 10000 else None)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    os.replace(tmp, path)
