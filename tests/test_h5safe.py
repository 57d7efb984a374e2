"""h5safe: hostile and damaged HDF5 files are refused with a message naming the file and the problem,
before any byte outside the file is read or any declared size is allocated; plain files read as
before."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from mincore.autograd import h5safe

SECRET = b"local secret: do not leak\n"


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_bytes(SECRET)
    return p


def write(path, build, **kw):
    with h5py.File(path, "w", **kw) as f:
        build(f)
    return path


def test_plain_file_reads_everything(tmp_path):
    def build(f):
        f["obs"] = np.arange(12, dtype=np.float32).reshape(4, 3)
        f.create_dataset("zipped", data=np.arange(5000.0), compression="gzip", shuffle=True, fletcher32=True)
        f.create_dataset("lzf", data=np.arange(100), compression="lzf")
        f["scalar"] = 2.5
        f["empty"] = np.zeros((0, 3))
        f["flags"] = np.array([True, False])
        f["group/inner"] = np.ones(2)
        f["alias"] = h5py.SoftLink("/group/inner")
        f["group/rel"] = h5py.SoftLink("inner")  # relative to its group
        f.attrs["env"] = "hopper"
        f.attrs["raw"] = np.bytes_(b"medium")
        f.attrs["n"] = 3
    path = write(tmp_path / "ok.h5", build)
    with h5safe.open_file(path) as f:
        src = str(path)
        assert h5safe.read_dataset(f, "obs", source=src, ndim=2, shape=(None, 3)).shape == (4, 3)
        np.testing.assert_array_equal(h5safe.read_dataset(f, "zipped", source=src), np.arange(5000.0))
        np.testing.assert_array_equal(h5safe.read_dataset(f, "lzf", source=src), np.arange(100))
        assert h5safe.read_dataset(f, "scalar", source=src, ndim=0) == 2.5
        assert h5safe.read_dataset(f, "empty", source=src).shape == (0, 3)
        assert h5safe.read_dataset(f, "flags", source=src, kinds="b").tolist() == [True, False]
        np.testing.assert_array_equal(h5safe.read_dataset(f, "alias", source=src), np.ones(2))
        np.testing.assert_array_equal(h5safe.read_dataset(f["group"], "rel", source=src), np.ones(2))
        assert h5safe.read_attrs(f, source=src) == {"env": "hopper", "raw": "medium", "n": 3}
        assert h5safe.read_attr(f, "missing", source=src, default="x") == "x"
        assert sorted(h5safe.dataset_names(f, source=src)) == ["empty", "flags", "group/inner", "lzf", "obs",
                                                              "scalar", "zipped"]


@pytest.mark.parametrize("make, needle", [
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: os.mkdir(p), "directory"),
])
def test_non_regular_files_refused_before_opening(tmp_path, make, needle):
    p = tmp_path / "data.h5"
    make(p)  # a FIFO without a writer would block any open() forever
    with pytest.raises(ValueError, match=f"data.h5: is a {needle}.*expected a regular HDF5 file"):
        h5safe.open_file(p)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        h5safe.open_file(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ValueError, match="junk.h5: not a readable HDF5 dataset file"):
        h5safe.open_file(junk, what="dataset file")


def test_external_link_refused(tmp_path):
    other = write(tmp_path / "other.h5", lambda f: f.__setitem__("x", np.arange(3.0)))
    path = write(tmp_path / "link.h5", lambda f: f.__setitem__("obs", h5py.ExternalLink(str(other), "/x")))
    with pytest.raises(ValueError, match=r"link.h5: refused: /obs is an external link to .*other.h5:/x"):
        h5safe.open_file(path)


@pytest.mark.parametrize("target", ["/nowhere", "../up", "/grp/hop/x"])
def test_soft_links_that_do_not_resolve_inside_refused(tmp_path, target):
    other = write(tmp_path / "other.h5", lambda f: f.__setitem__("x", np.arange(3.0)))

    def build(f):
        f["grp/hop"] = h5py.ExternalLink(str(other), "/")  # a soft link may route through this
        f["obs"] = h5py.SoftLink(target)
    path = write(tmp_path / "soft.h5", build)
    with pytest.raises(ValueError, match=f"soft.h5: refused: .*/obs is a soft link to {target}, which does not "
                                         f"resolve inside the file"):
        h5safe.open_file(path)


def test_external_storage_refused_and_nothing_leaks(tmp_path, secret):
    def build(f):
        f.create_dataset("rewards", shape=(len(SECRET),), dtype="u1", external=[(str(secret), 0, len(SECRET))])
    path = write(tmp_path / "ext.h5", build)
    with h5py.File(path, "r") as f:  # what a plain reader gets: the local file's bytes
        assert f["rewards"][()].tobytes() == SECRET
    with pytest.raises(ValueError, match=r"ext.h5: refused: dataset /rewards stores its data in external "
                                         r"file\(s\) .*secret.txt"):
        h5safe.open_file(path)


def test_virtual_dataset_refused(tmp_path):
    src = write(tmp_path / "src.h5", lambda f: f.__setitem__("x", np.arange(4.0)))

    def build(f):
        layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(src), "x", shape=(4,))
        f.create_virtual_dataset("obs", layout)
    path = write(tmp_path / "vds.h5", build)
    with pytest.raises(ValueError, match="vds.h5: refused: dataset /obs is a virtual dataset"):
        h5safe.open_file(path)


def _filtered(f, name, filters):
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((100,))
    for fid in filters:
        dcpl.set_filter(fid, h5py.h5z.FLAG_OPTIONAL)  # optional: written even where not installed
    d = h5py.h5d.create(f.id, name.encode(), h5py.h5t.NATIVE_INT64, h5py.h5s.create_simple((100,)), dcpl=dcpl)
    d.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(100, dtype=np.int64))


@pytest.mark.parametrize("build, needle", [
    (lambda f: f.create_dataset("x", data=np.arange(100), scaleoffset=0), r"filter id\(s\) \[6\]"),
    (lambda f: _filtered(f, "x", [307]), r"filter id\(s\) \[307\]"),
    (lambda f: _filtered(f, "x", [1, 32000]), "chains 2 compression filters"),
])
def test_unbounded_or_unknown_filters_refused(tmp_path, build, needle):
    path = write(tmp_path / "filt.h5", build)
    with pytest.raises(ValueError, match=f"filt.h5: refused: dataset /x .*{needle}"):
        h5safe.open_file(path)


def test_never_written_dataset_refused_before_reading(tmp_path):
    path = write(tmp_path / "lazy.h5", lambda f: f.create_dataset("obs", shape=(1 << 28,), dtype="f8"))
    assert os.path.getsize(path) < 10_000  # 2 GiB declared, nothing stored
    with h5safe.open_file(path) as f:
        with pytest.raises(ValueError, match=r"lazy.h5: dataset /obs declares 2147483648 bytes but was never "
                                             r"written"):
            h5safe.read_dataset(f, "obs", source=str(path))


def test_declared_size_beyond_stored_bytes_refused(tmp_path):
    def build(f):  # 2**40 elements declared, one 1 MiB chunk written: the rest would read as fill
        d = f.create_dataset("obs", shape=(1 << 40,), dtype="u1", chunks=(1 << 20,))
        d[: 1 << 20] = 1
    path = write(tmp_path / "huge.h5", build)
    with h5safe.open_file(path) as f:
        with pytest.raises(ValueError, match=r"huge.h5: dataset /obs declares 1099511627776 bytes but the file "
                                             r"stores 1048576 bytes"):
            h5safe.read_dataset(f, "obs", source=str(path), kinds="u")


def test_caller_byte_cap(tmp_path):
    path = write(tmp_path / "cap.h5", lambda f: f.__setitem__("obs", np.zeros((10, 10))))
    with h5safe.open_file(path) as f:
        assert h5safe.read_dataset(f, "obs", source=str(path), max_bytes=800).shape == (10, 10)
        with pytest.raises(ValueError, match="cap.h5: dataset /obs declares 800 bytes, more than the limit 799"):
            h5safe.read_dataset(f, "obs", source=str(path), max_bytes=799)


@pytest.mark.parametrize("data, kinds, needle", [
    (np.arange(3) * (1 + 1j), "iuf", r"dtype complex128 \(complex\), expected signed integer or unsigned "
                                     r"integer or float"),
    (np.array([b"ab", b"cd"]), "f", r"dtype \|S2 \(byte string\), expected float"),
    (np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f4")]), "iuf", r"dtype .* \(compound / opaque\)"),
    (np.arange(3), "f", r"dtype int64 \(signed integer\), expected float"),
])
def test_wrong_dtype_kinds_refused(tmp_path, data, kinds, needle):
    path = write(tmp_path / "kind.h5", lambda f: f.__setitem__("obs", data))
    with h5safe.open_file(path) as f, pytest.raises(ValueError, match=f"kind.h5: dataset /obs has {needle}"):
        h5safe.read_dataset(f, "obs", source=str(path), kinds=kinds)


def test_vlen_strings_refused_where_numbers_expected(tmp_path):
    path = write(tmp_path / "str.h5", lambda f: f.create_dataset("obs", data=["a", "b"], dtype=h5py.string_dtype()))
    with h5safe.open_file(path) as f, pytest.raises(ValueError, match=r"str.h5: dataset /obs .*object"):
        h5safe.read_dataset(f, "obs", source=str(path))


def test_shape_checks(tmp_path):
    path = write(tmp_path / "shape.h5", lambda f: f.__setitem__("obs", np.zeros((4, 3, 2))))
    with h5safe.open_file(path) as f:
        src = str(path)
        with pytest.raises(ValueError, match=r"shape.h5: dataset /obs has shape \(4, 3, 2\) \(3-D\), expected 1 "
                                             r"or 2-D"):
            h5safe.read_dataset(f, "obs", source=src, ndim=(1, 2))
        with pytest.raises(ValueError, match=r"dataset /obs has shape \(4, 3, 2\), expected \(\*, 5, 2\)"):
            h5safe.read_dataset(f, "obs", source=src, shape=(None, 5, 2))
        with pytest.raises(ValueError, match="shape.h5: missing dataset /actions"):
            h5safe.read_dataset(f, "actions", source=src)


def test_attribute_cap_and_text(tmp_path):
    def build(f):
        f.attrs["big"] = np.zeros(1000)
        f.attrs["bad"] = np.bytes_(b"\xff\xfe")
    path = write(tmp_path / "attr.h5", build)
    with h5safe.open_file(path) as f:
        with pytest.raises(ValueError, match=r"attr.h5: attribute /@big declares 8000 bytes, more than the limit "
                                             r"7999"):
            h5safe.read_attr(f, "big", source=str(path), max_bytes=7999)
        with pytest.raises(ValueError, match="attr.h5: attribute /@bad is not valid UTF-8"):
            h5safe.read_attrs(f, source=str(path))
