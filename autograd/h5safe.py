"""Reading HDF5 files that may be damaged or hostile: checks before every read.

An HDF5 file can point outside itself (external links, external raw-data storage, virtual datasets
mapping other files), and can declare datasets far larger than the bytes it holds (never written,
or fill values, or a fake address). Reading such a file naively copies local files into the
caller's arrays or allocates what the header claims. Here:

    open_file(path)       refuses what is not a regular file (a FIFO would block the read forever,
                          a device or directory is no data file), opens read-only, and walks every
                          link with `check_tree` before the caller touches anything
    check_tree(f)         refuses external and user-defined links, soft links that do not resolve
                          inside the file through hard links, datasets with external storage,
                          virtual datasets, and filters outside gzip / shuffle / fletcher32 / lzf
    read_dataset(...)     checks dtype kind, shape and size (against the caller's cap, the bytes
                          the file really stores and the file's size) and only then reads
    read_attr(...), read_attrs(...)   the same for attributes (bytes decoded to str)
    dataset_names(group)  the datasets under a group (hard links only)

Every refusal is a ValueError naming the file (`source`), the object, what it got and what was
expected; a missing file stays FileNotFoundError.
"""

from __future__ import annotations

import math
import os
import stat

import h5py
import numpy as np

__all__ = ["open_file", "check_tree", "dataset_names", "read_dataset", "read_attr", "read_attrs", "MAX_COMPRESSION",
           "ATTR_BYTES", "KIND_NAMES"]

# deflate cannot shrink data more than ~1032:1 and at most one compressor is allowed in a pipeline,
# so a dataset holding S bytes in the file decodes to at most S * MAX_COMPRESSION bytes
MAX_COMPRESSION = 1100
ATTR_BYTES = 16 << 20  # default cap on one attribute (configs and states are kilobytes)
# filters with a bounded output: deflate (1), shuffle (2), fletcher32 (3), lzf (32000)
_FILTERS = {h5py.h5z.FILTER_DEFLATE: "gzip", h5py.h5z.FILTER_SHUFFLE: "shuffle",
            h5py.h5z.FILTER_FLETCHER32: "fletcher32", 32000: "lzf"}
_COMPRESSORS = {h5py.h5z.FILTER_DEFLATE, 32000}
KIND_NAMES = {"b": "bool", "i": "signed integer", "u": "unsigned integer", "f": "float", "c": "complex",
              "S": "byte string", "U": "unicode string", "O": "object / variable-length",
              "V": "compound / opaque", "M": "datetime", "m": "timedelta"}


def _kinds(kinds: str) -> str:
    return " or ".join(KIND_NAMES.get(k, k) for k in kinds)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_file(path, *, what: str = "file") -> h5py.File:
    """Open `path` read-only after checking it is a regular file, and check its links and datasets
    (`check_tree`). `what` names the kind of file in the messages ("checkpoint", "dataset file")."""
    path = os.fspath(path)
    st = os.stat(path)  # FileNotFoundError stays itself; symlinks to regular files are fine
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: is {_file_kind(st.st_mode)}, expected a regular HDF5 {what}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 {what} (truncated or corrupted?): {e}") from e
    try:
        check_tree(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _soft_target_inside(f: h5py.File, link_name: str, target: str) -> bool:
    """Whether the soft link's target path resolves inside the file through hard links only."""
    base = target if target.startswith("/") else "/".join(["", *link_name.split("/")[:-1], target])
    group = f
    parts = [p for p in base.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if not isinstance(group, h5py.Group) or part == ".." or part not in group:
            return False
        if not isinstance(group.get(part, getlink=True), h5py.HardLink):
            return False
        if i < len(parts) - 1:
            group = group[part]
    return True


def check_tree(f: h5py.File, source) -> None:
    """Walk every link of the open file `f` (without following soft or external links) and refuse
    anything that reads outside the file: see the module docstring."""
    bad = []

    def visit(name, link):
        if isinstance(link, h5py.ExternalLink):
            bad.append(f"/{name} is an external link to {link.filename}:{link.path} (links to other "
                       f"files are refused)")
        elif isinstance(link, h5py.SoftLink):
            if not _soft_target_inside(f, name, link.path):
                bad.append(f"/{name} is a soft link to {link.path}, which does not resolve inside the file")
        elif not isinstance(link, h5py.HardLink):
            bad.append(f"/{name} is a {type(link).__name__} (only hard and soft links are accepted)")
        else:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                problem = _storage_problem(obj)
                if problem:
                    bad.append(f"dataset /{name} {problem}")
    _walk(f, visit, source)
    if bad:
        raise ValueError(f"{source}: refused: " + "; ".join(bad[:5])
                         + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))


def _walk(group, visit, source) -> None:
    """group.visititems_links(visit), with HDF5 errors of a damaged file as one ValueError. Errors
    are caught inside the callback: raised through HDF5's iteration, h5py turns them into SystemError."""
    err = []

    def guarded(name, link):
        try:
            visit(name, link)
        except (OSError, RuntimeError, KeyError, ValueError, UnicodeDecodeError) as e:
            err.append(e)
            return True  # a non-None return stops the walk
        return None
    try:
        group.visititems_links(guarded)
    except (OSError, RuntimeError, KeyError, ValueError, UnicodeDecodeError, SystemError) as e:
        err.append(e)
    if err:
        raise ValueError(f"{source}: the HDF5 structure cannot be read; the file is damaged or corrupted "
                         f"({type(err[0]).__name__}: {err[0]})") from err[0]


def dataset_names(group, *, source) -> list[str]:
    """Paths (relative to `group`) of the datasets reached through hard links under it."""
    names = []

    def visit(name, link):
        if isinstance(link, h5py.HardLink) and isinstance(group.get(name), h5py.Dataset):
            names.append(name)
    _walk(group, visit, source)
    return names


def _storage_problem(d: h5py.Dataset) -> str | None:
    """Why dataset `d` would read outside the file or through an unbounded filter (None if fine)."""
    if d.is_virtual:
        return "is a virtual dataset (its data lives in other files); refused"
    if d.external:
        return f"stores its data in external file(s) {[e[0] for e in d.external]}; refused"
    plist = d.id.get_create_plist()
    ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [i for i in ids if i not in _FILTERS]
    if unknown:
        return (f"uses HDF5 filter id(s) {unknown}; expected only "
                f"{', '.join(sorted(set(_FILTERS.values())))}")
    if sum(i in _COMPRESSORS for i in ids) > 1:
        return f"chains {sum(i in _COMPRESSORS for i in ids)} compression filters; expected at most one"
    return None


def _dataset(group, name, source) -> h5py.Dataset:
    where = f"/{group.name.strip('/')}/{name}".replace("//", "/")
    if name not in group:
        raise ValueError(f"{source}: missing dataset {where}")
    link = group.get(name, getlink=True)
    if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
        raise ValueError(f"{source}: {where} is a {type(link).__name__}; expected a dataset in this file")
    d = group.get(name)
    if not isinstance(d, h5py.Dataset):
        raise ValueError(f"{source}: {where} is a {type(d).__name__}, expected a dataset")
    return d


def _check_shape(where, got: tuple, ndim, shape, source) -> None:
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(got) not in allowed:
            raise ValueError(f"{source}: dataset {where} has shape {got} ({len(got)}-D), expected "
                             f"{' or '.join(map(str, allowed))}-D")
    if shape is not None and (len(got) != len(shape)
                              or any(s is not None and s != g for s, g in zip(shape, got, strict=False))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{source}: dataset {where} has shape {got}, expected {want}")


def read_dataset(group, name: str, *, source, kinds: str = "iuf", ndim=None, shape=None,
                 max_bytes: int | None = None) -> np.ndarray:
    """The array of dataset `name` in `group` (a File or Group), read only after these checks:
    it is a dataset of this file; its dtype kind is one of `kinds` (NumPy kind letters, default real
    numbers: complex, strings and compounds are refused); its number of dimensions is `ndim` (an int
    or a tuple of allowed ones) and its shape matches `shape` (None entries match anything); its
    declared size is at most `max_bytes`, at most the file's size and at most MAX_COMPRESSION times
    the bytes the file stores for it (a never-written dataset stores none and is refused)."""
    d = _dataset(group, name, source)
    where = d.name
    problem = _storage_problem(d)
    if problem:
        raise ValueError(f"{source}: dataset {where} {problem}")
    if d.shape is None:
        raise ValueError(f"{source}: dataset {where} has a null dataspace (no elements at all), expected "
                         f"an array")
    dt = d.dtype
    if dt.kind not in kinds or dt.subdtype is not None:
        raise ValueError(f"{source}: dataset {where} has dtype {dt} ({KIND_NAMES.get(dt.kind, dt.kind)}), "
                         f"expected {_kinds(kinds)}")
    got = tuple(int(n) for n in d.shape)
    _check_shape(where, got, ndim, shape, source)
    _check_size(d, where, math.prod(got) * dt.itemsize, max_bytes, source)
    try:
        return np.asarray(d[()])
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"{source}: dataset {where} cannot be read; the file is damaged or corrupted "
                         f"({e})") from e


def _check_size(d: h5py.Dataset, where, nbytes: int, max_bytes, source) -> None:
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(f"{source}: dataset {where} declares {nbytes} bytes, more than the limit "
                         f"{max_bytes}")
    if nbytes == 0:
        return
    stored, file_size = int(d.id.get_storage_size()), int(d.file.id.get_filesize())
    if stored == 0:
        raise ValueError(f"{source}: dataset {where} declares {nbytes} bytes but was never written "
                         f"(no storage allocated); refused")
    if stored > file_size or nbytes > stored * MAX_COMPRESSION:
        raise ValueError(f"{source}: dataset {where} declares {nbytes} bytes but the file stores "
                         f"{stored} bytes for it in a {file_size}-byte file; refused as damaged or crafted")
    if d.chunks is not None:  # each chunk is decoded into a buffer of its full declared size
        chunk = math.prod(d.chunks) * d.dtype.itemsize
        if chunk > max(nbytes, 16 << 20):
            raise ValueError(f"{source}: dataset {where} declares {chunk}-byte chunks for {nbytes} bytes "
                             f"of data; refused")


def _attr_value(obj, name: str, source, max_bytes: int):
    where = f"{obj.name.rstrip('/')}@{name}" if obj.name != "/" else f"/@{name}"
    try:
        a = obj.attrs.get_id(name)
        shape = tuple(int(n) for n in (a.shape or ()))
        nbytes = math.prod(shape) * a.dtype.itemsize
        limit = min(max_bytes, int(obj.file.id.get_filesize()))
        if nbytes > limit:
            raise ValueError(f"{source}: attribute {where} declares {nbytes} bytes, more than the limit "
                             f"{limit}")
        v = obj.attrs[name]
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{source}: attribute {where} cannot be read; the file is damaged or "
                         f"corrupted ({e})") from e
    if isinstance(v, (bytes, np.bytes_)):
        try:
            return v.decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}: attribute {where} is not valid UTF-8 text ({e})") from e
    return v


def read_attr(obj, name: str, *, source, default=None, max_bytes: int = ATTR_BYTES):
    """Attribute `name` of `obj` (File, Group or Dataset) or `default` when absent; its declared size
    is checked against `max_bytes` and the file's size before it is read; bytes come back as str."""
    try:
        present = name in obj.attrs
    except (OSError, RuntimeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: the attributes of {obj.name} cannot be read (corrupted?): {e}") from e
    return _attr_value(obj, name, source, max_bytes) if present else default


def read_attrs(obj, *, source, max_bytes: int = ATTR_BYTES) -> dict:
    """All attributes of `obj` as a dict, each checked as in `read_attr`."""
    try:
        names = list(obj.attrs)
    except (OSError, RuntimeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: the attributes of {obj.name} cannot be read (corrupted?): {e}") from e
    return {n: _attr_value(obj, n, source, max_bytes) for n in names}
