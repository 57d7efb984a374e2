"""Minari datasets (the maintained successor of D4RL) as D4RL-layout Datasets, and back.

`--dataset minari:ID` names a dataset in the local Minari storage: $MINARI_DATASETS_PATH, else
~/.minari/datasets, laid out as <root>/<ID>/data/{metadata.json, main_data.hdf5 | arrow files}.
Nothing is downloaded: a dataset that is not there is refused with the `minari download ID` command.

Reading (load): a Minari episode of T steps holds T + 1 observations (the last is the state after
the final action), T actions, rewards, terminations and truncations. The D4RL layout keeps one
observation per step, so the last is dropped; terminations become `terminals` and truncations
`timeouts` (a step that is both counts as a terminal, as D4RL's flags are exclusive). An episode whose
last step carries neither flag (a collector stopped mid-episode) ends with a timeout, so that it stays
one episode. Observation and action spaces must be 1-D Boxes; every episode's arrays must have
these lengths, no flag may end an episode before its last step, and the values are then checked
as for any D4RL file (finite floats): each refusal is a ValueError naming `minari:ID` and the problem.
The environment (halfcheetah | hopper | walker2d, for D4RL-normalised scores) is read from the
dataset's env_spec id (`HalfCheetah-v5` -> halfcheetah); another environment gives no normalised score.

Writing (write): a D4RL-layout file (what `mincore rl collect` makes) becomes a Minari dataset with
the environment's spec (the file's time limit as max_episode_steps) and D4RL's reference returns as
ref_min_score / ref_max_score, so `minari.load_dataset(ID)` and minari.get_normalized_score read it.
Its episodes are the file's (split on terminals / timeouts; a trailing episode without a flag is
marked truncated). The final observation each Minari episode needs is the file's `next_observations`
row of the episode's last step when the file has that key (genuine D4RL files do), else a repeat of
the last stored observation: the D4RL layout does not keep the state after an episode's last action.

The `minari` package is imported only here, on use: `import mincore` and D4RL files do not need it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from . import data as rl_data

__all__ = ["PREFIX", "is_minari", "dataset_id", "require_minari", "root", "load", "write", "env_name"]

PREFIX = "minari:"
ENV_IDS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
_ID = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def is_minari(spec) -> bool:
    """Whether a --dataset value names a Minari dataset (minari:ID) rather than a file."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def dataset_id(spec: str) -> str:
    """The ID of `minari:ID` (or of a bare ID), checked to stay inside the Minari root."""
    ds_id = spec[len(PREFIX):] if is_minari(spec) else spec
    if not ds_id:
        raise ValueError(f"dataset: {spec!r} names no Minari dataset; expected minari:ID, e.g. "
                         f"minari:mujoco/halfcheetah/medium-v0")
    if not _ID.fullmatch(ds_id) or any(p in (".", "..") for p in ds_id.split("/")):
        raise ValueError(f"dataset: Minari ID {ds_id!r} is malformed; expected names of letters, digits, "
                         f"'_', '.', '-' separated by '/', e.g. mujoco/halfcheetah/medium-v0")
    return ds_id


def require_minari():
    """The minari package, or a RuntimeError saying how to install it."""
    try:
        import minari
    except ImportError as e:
        raise RuntimeError(f"Minari datasets need the minari package ({e}); install it with: "
                           f"pip install 'mincore[rl]'") from None
    return minari


def root() -> Path:
    """Minari's local storage: $MINARI_DATASETS_PATH, else ~/.minari/datasets (as minari resolves it)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def env_name(env_id) -> str | None:
    """halfcheetah / hopper / walker2d for a gymnasium id of those environments (any version), else None."""
    if not isinstance(env_id, str):
        return None
    base = re.sub(r"[^a-z0-9]", "", env_id.rsplit("/", 1)[-1].split("-v")[0].lower())
    return base if base in rl_data.REF_MIN_MAX else None


def _open(ds_id: str, source: str):
    """The MinariDataset, after refusing a missing dataset and (HDF5 storage) a file that points
    outside itself; minari's own errors become ValueErrors naming `source`."""
    minari = require_minari()
    data = root() / ds_id / "data"
    if not (data / "metadata.json").is_file():
        raise FileNotFoundError(f"{source}: no such dataset in the local Minari storage ({root()}); download "
                                f"it with `minari download {ds_id}`, or set MINARI_DATASETS_PATH to the folder "
                                f"holding it")
    main = data / "main_data.hdf5"
    if main.exists():  # minari reads it with plain h5py: refuse links and storage outside the file first
        from mincore.autograd import h5safe

        with h5safe.open_file(main, what="Minari data file"):
            pass
    try:
        return minari.MinariDataset(data)
    except (AssertionError, KeyError, TypeError, ValueError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: not a readable Minari dataset ({type(e).__name__}: {e})") from None


def _box_dim(space, what: str, source: str) -> int:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{source}: the {what} space is {space}, expected a 1-D Box (vectors of numbers)")
    return int(space.shape[0])


def _episode(ep, obs_dim: int, act_dim: int, source: str) -> dict | None:
    """One Minari episode as D4RL arrays (None for an episode of 0 steps)."""
    where = f"{source}: episode {ep.id}"
    arrays = {k: np.asarray(getattr(ep, k)) for k in ("observations", "actions", "rewards", "terminations",
                                                      "truncations")}
    T = len(arrays["rewards"])
    want = {"observations": (T + 1, obs_dim), "actions": (T, act_dim), "rewards": (T,), "terminations": (T,),
            "truncations": (T,)}
    for k, shape in want.items():
        if arrays[k].shape != shape:
            extra = " (Minari keeps the observation after the last step too)" if k == "observations" else ""
            raise ValueError(f"{where}: {k} has shape {arrays[k].shape}, expected {shape} for its {T} "
                             f"rewards{extra}")
    if T == 0:
        return None
    term = rl_data._flags("terminations", arrays["terminations"], where)
    trunc = rl_data._flags("truncations", arrays["truncations"], where)
    early = np.flatnonzero((term | trunc)[:-1])
    if len(early):
        raise ValueError(f"{where}: the episode ends (termination / truncation) at step {early[0]} of {T}; "
                         f"only its last step may end it")
    trunc = trunc & ~term
    if not (term[-1] or trunc[-1]):
        trunc[-1] = True  # a collector stopped mid-episode: keep it one (truncated) episode
    return {"observations": arrays["observations"][:-1], "actions": arrays["actions"], "rewards": arrays["rewards"],
            "terminals": term, "timeouts": trunc}


def load(spec: str) -> rl_data.Dataset:
    """The Dataset of local Minari dataset `minari:ID` (see the module docstring)."""
    ds_id = dataset_id(spec)
    source = PREFIX + ds_id
    ds = _open(ds_id, source)
    obs_dim = _box_dim(ds.observation_space, "observation", source)
    act_dim = _box_dim(ds.action_space, "action", source)
    try:
        eps = [e for e in (_episode(ep, obs_dim, act_dim, source) for ep in ds.iterate_episodes()) if e]
    except (KeyError, OSError, AssertionError) as e:
        raise ValueError(f"{source}: an episode cannot be read; the dataset is damaged ({type(e).__name__}: "
                         f"{e})") from None
    if not eps:
        raise ValueError(f"{source}: the dataset holds no steps (0 episodes with data)")
    arrays = {k: np.concatenate([e[k] for e in eps]) for k in rl_data.KEYS}
    spec_id = getattr(ds.env_spec, "id", None)
    attrs = {"minari_id": ds_id, "source": f"Minari dataset {ds_id}"}
    if spec_id:
        attrs["env_id"] = spec_id
    if env_name(spec_id):
        attrs["env"] = env_name(spec_id)
    meta = ds.storage.metadata
    if isinstance(meta.get("description"), str):
        attrs["how"] = meta["description"]
    return rl_data.from_arrays(arrays, attrs, source=source)


def _final_observations(path, ds: rl_data.Dataset) -> np.ndarray:
    """The observation after each episode's last step: next_observations where the file has it, else
    the last stored observation repeated (see the module docstring)."""
    last = np.array([e - 1 for _, e in ds.episodes])
    from mincore.autograd import h5safe

    with h5safe.open_file(path, what="D4RL-layout file") as f:
        if "next_observations" in f:
            nxt = h5safe.read_dataset(f, "next_observations", source=str(path), kinds="f",
                                      shape=ds.observations.shape)
            out = nxt[last].astype(np.float32)
            if not np.isfinite(out).all():
                raise ValueError(f"{path}: next_observations has non-finite values at episode ends")
            return out
    return ds.observations[last]


def write(path, ds_id: str, *, description: str | None = None) -> str:
    """Write the D4RL-layout file `path` as Minari dataset `ds_id` in the local storage; its ID.
    A dataset of that ID made from the same file settings is kept; another one is refused."""
    minari = require_minari()
    ds_id = dataset_id(ds_id)
    ds = rl_data.load(path)
    env = ds.attrs.get("env")
    env_id = ds.attrs.get("env_id") or ENV_IDS.get(env)
    if not isinstance(env_id, str):
        raise ValueError(f"{path}: the file names no environment (attribute env or env_id); a Minari dataset "
                         f"needs one for its env_spec")
    made_from = json.dumps({k: str(ds.attrs.get(k)) for k in ("env", "env_id", "kind", "collect_config")},
                           sort_keys=True)
    target = root() / ds_id
    if target.exists():
        if (target / "data" / "metadata.json").is_file():
            meta = json.loads((target / "data" / "metadata.json").read_text())
            if meta.get("mincore_made_from") == made_from:
                return ds_id
        raise ValueError(f"minari:{ds_id} already exists in {root()} and holds other data; choose another "
                         f"--dataset-id, or delete it with `minari delete {ds_id}`")
    horizon = _setting(ds.attrs.get("collect_config"), "horizon")
    horizon = horizon if isinstance(horizon, int) and horizon > 0 else None
    gym_env = _env(env, env_id, horizon)
    final = _final_observations(path, ds)
    buffers = [_buffer(ds, i, s, e, final[i]) for i, (s, e) in enumerate(ds.episodes)]
    ref = dict(zip(("ref_min_score", "ref_max_score"), rl_data.REF_MIN_MAX[env], strict=True)) \
        if env in rl_data.REF_MIN_MAX else {}
    try:
        with warnings.catch_warnings():  # minari warns about every metadata field left out
            warnings.simplefilter("ignore")
            out = minari.create_dataset_from_buffers(
                ds_id, buffers, env=gym_env, algorithm_name=str(ds.attrs.get("kind", "unknown")), author="mincore",
                description=description or str(ds.attrs.get("how", f"D4RL-layout file {Path(path).name}")),
                **ref)
            out.storage.update_metadata({"mincore_made_from": made_from})
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written dataset left under the ID
        raise
    return ds_id


def _env(env, env_id: str, horizon: int | None):
    """The environment whose spec the Minari dataset records (time limit: the file's horizon)."""
    from . import collect as rl_collect

    if env in rl_collect.ENVS and rl_collect.ENVS[env] == env_id:  # MuJoCo's warnings routed as in collection
        return rl_collect.make_env(env, horizon or 1000)
    import dataclasses

    import gymnasium as gym

    spec = gym.spec(env_id)
    return gym.make(dataclasses.replace(spec, max_episode_steps=horizon) if horizon else spec)


def _setting(settings, key):
    """One field of the file's collect_config attribute (JSON text), or None."""
    try:
        d = json.loads(settings)
    except (TypeError, ValueError):
        return None
    return d.get(key) if isinstance(d, dict) else None


def _buffer(ds: rl_data.Dataset, i: int, s: int, e: int, final: np.ndarray):
    from minari.data_collector import EpisodeBuffer

    trunc = ds.timeouts[s:e].copy()
    if not (ds.terminals[e - 1] or trunc[-1]):
        trunc[-1] = True  # a trailing run without a flag: a truncated episode
    return EpisodeBuffer(id=i, observations=np.concatenate([ds.observations[s:e], final[None]]),
                         actions=ds.actions[s:e], rewards=ds.rewards[s:e], terminations=ds.terminals[s:e],
                         truncations=trunc)
