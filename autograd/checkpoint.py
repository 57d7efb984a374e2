"""Checkpoints in HDF5: parameters, optimizer state, step, RNG state and a JSON config.

Layout (attributes on the root mark the format, so a foreign HDF5 file is recognised and refused):
    /             attrs: format="mincore-checkpoint", version, step, config (JSON), rng (JSON: the
                  numpy Generator's bit_generator.state), optimizer (JSON: t and group hyper-parameters),
                  sha256 (hex digest of all of the above and every dataset, see `_digest`)
    /params/NAME  one dataset per parameter (dotted names as given by Module.named_parameters)
    /optim/I/KEY  optimizer moment arrays of parameter index I (e.g. m, v)
Integrity: every non-empty array dataset carries HDF5's Fletcher-32 checksum, the metadata uses the
checksummed HDF5 1.8 object format, and the sha256 digest covers the whole state, so a flipped bit
anywhere is refused on load instead of silently changing numbers. Version-1 files (no digest) still
load, with a warning. Files are read through `h5safe`, which refuses links to other files, external
storage, non-regular files and datasets whose declared size the file cannot back.

The write is atomic: a temporary file in the same directory is written, flushed, fsync'ed and then
os.replace'd over the target, so a crash leaves either the old checkpoint or the new one, never half.
A process killed mid-write leaves its temporary file; `remove_stale_temps` deletes those.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import secrets
import time
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import h5safe

__all__ = ["save_checkpoint", "load_checkpoint", "remove_stale_temps", "Checkpoint", "FORMAT",
           "VERSION", "MAX_STEP"]

FORMAT = "mincore-checkpoint"
VERSION = 2  # 2: sha256 digest and Fletcher-32 checksums; 1: neither (loads with a warning)
MAX_STEP = 2 ** 53  # steps and optimizer counts are exact integers below this (JSON / float64 safe)
_ATTRS = ("format", "version", "step", "config", "rng", "optimizer")  # digested, in this order
_TEMP = re.compile(r"\.ckpt-[a-z0-9_]{8,32}\.h5\.tmp")  # this writer's temporary files (and mkstemp's)
_REAL = "biuf"  # dtype kinds a parameter or moment may have
_LIBVER = ("v110", "v110")  # HDF5 1.10 formats: checksummed metadata, compact chunk indices


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


def _check_count(value, what: str, source, hi: int = MAX_STEP) -> int:
    """`value` as an int if it is an integer (not bool / float) in [0, hi], else a ValueError."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if not ok or not 0 <= int(value) <= hi:
        shown = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"{source}: {what} is {shown!r} ({type(value).__name__}), expected an integer "
                         f"from 0 to {hi}")
    return int(value)


def _digest(arrays: dict, attrs: dict) -> str:
    """sha256 over the attributes in _ATTRS order, then every dataset (sorted path, dtype, shape,
    bytes in little-endian order); each field is length-prefixed so its boundaries are unambiguous."""
    h = hashlib.sha256()

    def put(b: bytes | memoryview | np.ndarray):
        n = b.nbytes if isinstance(b, (memoryview, np.ndarray)) else len(b)
        h.update(n.to_bytes(8, "little"))
        h.update(b)
    for key in _ATTRS:
        put(key.encode())
        put(str(attrs[key]).encode("utf-8", "surrogateescape"))  # h5py decodes invalid UTF-8 so
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        put(name.encode("utf-8", "surrogateescape"))
        put(a.dtype.str.encode())
        put(repr(tuple(a.shape)).encode())
        put(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def save_checkpoint(path, model, optimizer=None, *, step: int = 0, rng=None, config=None) -> None:
    """Write model parameters (and optimizer state, step, rng state, config) to `path` atomically.

    model: a Module (or a dict name -> array); rng: numpy Generator whose state is stored so the
    random stream continues bit-identically after `load_checkpoint(..., rng=...)`.
    """
    path = os.fspath(path)
    params = model if isinstance(model, dict) else model.state_dict()
    arrays = {f"params/{n}": _host(a) for n, a in params.items()}
    sd = optimizer.state_dict() if optimizer is not None else None
    for i, s in (sd["state"] if sd else {}).items():
        arrays.update({f"optim/{i}/{k}": _host(a) for k, a in s.items()})
    for name, a in arrays.items():
        if a.dtype.kind not in _REAL:
            raise ValueError(f"save_checkpoint: {name} has dtype {a.dtype}, expected real numbers")
    attrs = {"format": FORMAT, "version": VERSION, "step": _check_count(step, "step", "save_checkpoint"),
             "config": json.dumps(config, default=_json_default),
             "rng": json.dumps(rng.bit_generator.state if rng is not None else None, default=_json_default),
             "optimizer": json.dumps(None if sd is None else {"t": sd["t"], "groups": sd["groups"]},
                                     default=_json_default)}
    attrs["sha256"] = _digest(arrays, attrs)
    _write_atomic(path, arrays, attrs)


def _write_atomic(path: str, arrays: dict, attrs: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp forces 0600)
    while True:
        tmp = os.path.join(d, f".ckpt-{secrets.token_hex(8)}.h5.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            with h5py.File(fh, "w", libver=_LIBVER) as f:
                f.create_group("params")
                f.create_group("optim")
                for name, a in arrays.items():
                    chunked = a.ndim > 0 and a.size > 0  # filters need chunks; scalars / empty cannot
                    f.create_dataset(name, data=a, **({"chunks": True, "fletcher32": True} if chunked else {}))
                for k, v in attrs.items():
                    f.attrs[k] = v
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


def remove_stale_temps(folder, min_age: float = 0.0) -> list[str]:
    """Delete the temporary files `save_checkpoint` leaves in `folder` when a process is killed
    mid-write (names `.ckpt-*.h5.tmp`; nothing else is touched) that were last modified at least
    `min_age` seconds ago. Call it when no other process is writing checkpoints into `folder`.
    Returns the removed paths."""
    removed = []
    now = time.time()
    with os.scandir(folder) as entries:
        for e in entries:
            if _TEMP.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime >= min_age:
                        os.remove(e.path)
                        removed.append(e.path)
                except FileNotFoundError:  # removed meanwhile
                    pass
    return removed


def _read_arrays(f, path) -> dict:
    """Every dataset under /params and /optim by its path, each checked by h5safe before reading."""
    arrays = {}
    for top in ("params", "optim"):
        if not isinstance(f.get(top), h5py.Group):
            raise ValueError(f"{path}: checkpoint is missing the group /{top}")
        for n in h5safe.dataset_names(f[top], source=path):
            arrays[f"{top}/{n}"] = h5safe.read_dataset(f[top], n, source=path, kinds=_REAL)
    return arrays


def _json_attr(value, what, path):
    """A JSON object (dict) or null stored as a string attribute."""
    try:
        v = json.loads(value) if isinstance(value, str) else value
    except ValueError as e:
        raise ValueError(f"{path}: the {what} attribute is not valid JSON ({e})") from e
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"{path}: the {what} attribute holds {type(v).__name__}, expected a JSON object")
    return v


def _optimizer_state(opt: dict | None, arrays: dict, path) -> dict | None:
    if opt is None:
        return None
    missing = [k for k in ("t", "groups") if k not in opt]
    if missing:
        raise ValueError(f"{path}: the optimizer attribute lacks {', '.join(missing)} (expected t and groups)")
    _check_count(opt["t"], "optimizer t", path)
    if not isinstance(opt["groups"], list) or not all(isinstance(g, dict) for g in opt["groups"]):
        raise ValueError(f"{path}: optimizer groups is {type(opt['groups']).__name__}, expected a list of objects")
    state = {}
    for name, a in arrays.items():
        if name.startswith("optim/"):
            parts = name.split("/")
            if len(parts) != 3 or not parts[1].isdigit():
                raise ValueError(f"{path}: dataset /{name} is not /optim/INDEX/NAME (INDEX a parameter index)")
            state.setdefault(int(parts[1]), {})[parts[2]] = a
    return {**opt, "state": state}


def _read(path) -> Checkpoint:
    with h5safe.open_file(path, what="checkpoint") as f:
        try:
            attr = lambda name: h5safe.read_attr(f, name, source=path)  # noqa: E731
            fmt = attr("format")
            if not isinstance(fmt, str) or fmt != FORMAT:
                raise ValueError(f"{path}: not a mincore checkpoint (root attribute format={fmt!r}, "
                                 f"expected {FORMAT!r})")
            version = _check_count(attr("version"), "checkpoint version", path)
            if version < 1:
                raise ValueError(f"{path}: checkpoint version is {version}, expected 1 to {VERSION}")
            if version > VERSION:
                raise ValueError(f"{path}: checkpoint version {version} is newer than supported ({VERSION})")
            arrays = _read_arrays(f, path)
            raw = {k: attr(k) for k in _ATTRS}
            missing = [k for k, v in raw.items() if v is None]
            if missing:
                raise ValueError(f"{path}: checkpoint is missing the root attribute(s) {', '.join(missing)}")
            _verify(path, version, arrays, raw, attr("sha256"))
        except (OSError, KeyError, TypeError, RuntimeError, IndexError, OverflowError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: damaged mincore checkpoint ({type(e).__name__}: {e})") from e
    params = {n[len("params/"):].replace("/", "."): a for n, a in arrays.items() if n.startswith("params/")}
    return Checkpoint(params=params, step=_check_count(raw["step"], "step", path),
                      config=_json_attr(raw["config"], "config", path),
                      rng_state=_json_attr(raw["rng"], "rng", path),
                      optimizer=_optimizer_state(_json_attr(raw["optimizer"], "optimizer", path), arrays, path))


def _verify(path, version: int, arrays: dict, raw: dict, digest) -> None:
    if digest is None:
        if version >= 2:
            raise ValueError(f"{path}: checkpoint is corrupted: its sha256 digest attribute is missing")
        warnings.warn(f"{path}: checkpoint from an older mincore without an integrity digest; it loads "
                      f"unchecked (saving it again adds one)", stacklevel=4)
        return
    got = _digest(arrays, raw)
    if got != digest:
        raise ValueError(f"{path}: checkpoint is corrupted: its contents do not match the sha256 digest "
                         f"written with it (stored {str(digest)[:16]}..., computed {got[:16]}...)")


def _check_rng_state(rng, state, path) -> None:
    """Refuse a state that `rng`'s bit generator cannot take, trying it on a fresh one of its kind."""
    name = type(rng.bit_generator).__name__
    if not isinstance(state, dict) or state.get("bit_generator") != name or "state" not in state:
        got, keys = (state.get("bit_generator"), sorted(state)) if isinstance(state, dict) else (state, [])
        raise ValueError(f"{path}: rng state is for {got!r} (keys {keys}), expected a {name} state with "
                         f"keys bit_generator and state")
    try:
        type(rng.bit_generator)().state = state
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: rng state cannot be restored ({type(e).__name__}: {e})") from e


def load_checkpoint(path, model=None, optimizer=None, rng=None, *, max_step: int | None = None) -> Checkpoint:
    """Read `path`; when given, restore `model` parameters, `optimizer` state and `rng` state in place.

    Raises ValueError naming the path when the file is truncated, corrupted, crafted or not a mincore
    checkpoint, or does not fit the model / optimizer / rng (then none of them is changed);
    `max_step` also bounds the saved step.
    """
    path = os.fspath(path)
    ck = _read(path)
    if max_step is not None:
        _check_count(ck.step, "step", path, hi=max_step)
    if optimizer is not None and ck.optimizer is None:
        raise ValueError(f"{path}: checkpoint holds no optimizer state")
    if rng is not None:
        if ck.rng_state is None:
            raise ValueError(f"{path}: checkpoint holds no RNG state")
        _check_rng_state(rng, ck.rng_state, path)
    before = model.state_dict() if model is not None and optimizer is not None else None
    try:  # each load_state_dict checks all it is given before changing anything
        if model is not None:
            model.load_state_dict(ck.params)
        if optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
    except ValueError as e:
        if before is not None:  # the optimizer refused: undo the parameters
            model.load_state_dict(before)
        raise ValueError(f"{path}: {e}") from e
    if rng is not None:
        rng.bit_generator.state = ck.rng_state
    return ck
