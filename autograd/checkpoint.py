"""Checkpoints in HDF5: parameters, optimizer state, step, RNG state and a JSON config.

Layout (attributes on the root mark the format, so a foreign HDF5 file is recognised and refused):
    /             attrs: format="mincore-checkpoint", version, step, config (JSON), rng (JSON: the
                  numpy Generator's bit_generator.state), optimizer (JSON: t and group hyper-parameters)
    /params/NAME  one dataset per parameter (dotted names as given by Module.named_parameters)
    /optim/I/KEY  optimizer moment arrays of parameter index I (e.g. m, v)
The write is atomic: a temporary file in the same directory is written, flushed, fsync'ed and then
os.replace'd over the target, so a crash leaves either the old checkpoint or the new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import h5py
import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "FORMAT", "VERSION"]

FORMAT = "mincore-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: host (NumPy) arrays and plain Python values."""
    params: dict[str, np.ndarray]
    step: int
    config: dict | None = None
    rng_state: dict | None = None
    optimizer: dict | None = field(default=None, repr=False)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(path, model, optimizer=None, *, step: int = 0, rng=None, config=None) -> None:
    """Write model parameters (and optimizer state, step, rng state, config) to `path` atomically.

    model: a Module (or a dict name -> array); rng: numpy Generator whose state is stored so the
    random stream continues bit-identically after `load_checkpoint(..., rng=...)`.
    """
    params = model if isinstance(model, dict) else model.state_dict()
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".h5.tmp", dir=d)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            with h5py.File(fh, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["version"] = VERSION
                f.attrs["step"] = int(step)
                f.attrs["config"] = json.dumps(config, default=_json_default)
                f.attrs["rng"] = json.dumps(rng.bit_generator.state if rng is not None else None,
                                            default=_json_default)
                gp = f.create_group("params")
                for name, a in params.items():
                    gp.create_dataset(name, data=a.get() if hasattr(a, "get") else np.asarray(a))
                sd = optimizer.state_dict() if optimizer is not None else None
                f.attrs["optimizer"] = json.dumps(
                    None if sd is None else {"t": sd["t"], "groups": sd["groups"]}, default=_json_default)
                go = f.create_group("optim")
                for i, s in (sd["state"] if sd else {}).items():
                    gi = go.create_group(str(i))
                    for k, a in s.items():
                        gi.create_dataset(k, data=a)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (POSIX); harmless where directories cannot be opened
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _read(path) -> Checkpoint:
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 checkpoint (truncated or corrupted?): {e}") from e
    with f:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise ValueError(f"{path}: not a mincore checkpoint (root attribute format={fmt!r}, "
                             f"expected {FORMAT!r})")
        if int(f.attrs.get("version", -1)) > VERSION:
            raise ValueError(f"{path}: checkpoint version {f.attrs['version']} is newer than supported "
                             f"({VERSION})")
        for key in ("params", "optim"):
            if key not in f:
                raise ValueError(f"{path}: checkpoint is missing the group /{key}")
        try:
            params = {}
            f["params"].visititems(lambda n, o: params.__setitem__(n.replace("/", "."), o[()])
                                   if isinstance(o, h5py.Dataset) else None)
            opt = json.loads(f.attrs["optimizer"])
            if opt is not None:
                opt["state"] = {int(i): {k: g[k][()] for k in g} for i, g in f["optim"].items()}
            return Checkpoint(params=params, step=int(f.attrs["step"]), config=json.loads(f.attrs["config"]),
                              rng_state=json.loads(f.attrs["rng"]), optimizer=opt)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: damaged mincore checkpoint ({type(e).__name__}: {e})") from e


def load_checkpoint(path, model=None, optimizer=None, rng=None) -> Checkpoint:
    """Read `path`; when given, restore `model` parameters, `optimizer` state and `rng` state in place.

    Raises ValueError naming the path when the file is truncated, corrupted or not a mincore checkpoint.
    """
    ck = _read(os.fspath(path))
    if model is not None:
        model.load_state_dict(ck.params)
    if optimizer is not None:
        if ck.optimizer is None:
            raise ValueError(f"{path}: checkpoint holds no optimizer state")
        optimizer.load_state_dict(ck.optimizer)
    if rng is not None:
        if ck.rng_state is None:
            raise ValueError(f"{path}: checkpoint holds no RNG state")
        rng.bit_generator.state = ck.rng_state
    return ck
