"""mincore.bench on the CPU: every cell benchmarked with the right minimal traffic, each row against
its like (preallocated calls against the fastest preallocated copy, allocating calls against an
allocating copy), the warnings that say when a run's ratios are doubtful, and `--cell` in the CLI.
Tiny shapes only: timings are never asserted, only how they are turned into rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mincore import bench as B
from mincore.cli.bench import bench


def fake_times(copy_ms, kernel_ms, n=3):
    """Interleaved times (seconds) for summarise: three copies, x.copy() and one engine's two rows."""
    t = {f"copy: {name}": [ms * 1e-3] * n for name, ms in copy_ms.items()}
    t["x.copy() fwd"], t["x.copy() bwd"] = [40e-3] * n, [100e-3] * n
    for name, (f, b) in kernel_ms.items():
        t[name + " fwd"], t[name + " bwd"] = [f * 1e-3] * n, [b * 1e-3] * n
    return t


KINDS = {"numba": ("x.copy()", None, None, False), "numba (out=)": ("copy", None, None, False)}


def test_rows_compare_like_with_like_and_the_fastest_copy_wins():
    nbytes = 10**9
    times = fake_times({"numba prange": 100, "np.copyto": 80, "numba chunked": 160},
                       {"numba": (200, 400), "numba (out=)": (150, 300)})
    rows, notes = B.summarise("mingru", (64, 4096, 256), "float32", nbytes, times, KINDS, 0.5)
    copy_gbps, alloc_bwd = 2 * nbytes / 80e-3 / 1e9, 2 * 2 * nbytes / 100e-3 / 1e9  # minGRU's bwd: 2 arrays
    got = {(r["engine"], r["pass"]): r for r in rows}
    out = got["numba (out=)", "fwd+bwd"]
    assert out["yardstick"] == "copy" and out["copy GB/s"] == pytest.approx(copy_gbps)
    assert out["GB/s"] == pytest.approx(9 * nbytes / 450e-3 / 1e9)
    assert out["% of copy"] == pytest.approx(100 * out["GB/s"] / copy_gbps)
    api = got["numba", "bwd"]
    assert api["yardstick"] == "x.copy()" and api["copy GB/s"] == pytest.approx(alloc_bwd)
    api_both = got["numba", "fwd+bwd"]
    assert api_both["copy GB/s"] == pytest.approx(2 * 3 * nbytes / 140e-3 / 1e9)
    assert api["GB/s"] == pytest.approx(6 * nbytes / 400e-3 / 1e9)
    assert notes[0].startswith("mingru (64, 4096, 256) float32: copy = np.copyto 25.0 GB/s")
    assert "numba chunked 12.5" in notes[0] and "load average 0.50" in notes[0]
    assert "x.copy() 50.0 GB/s one array at a time, 40.0 2 at once" in notes[0]
    assert {"ms min", "ms max", "load"} <= set(out)


@pytest.mark.parametrize("cell, values", [("mingru", (3, 6)), ("minlstm", (4, 8)), ("scan", (3, 5)),
                                          ("lru", (2, 3))])
def test_each_cell_counts_its_minimal_traffic(cell, values):
    times = fake_times({"numba prange": 100, "np.copyto": 100, "numba chunked": 100}, {"numba": (100, 100)})
    rows, _ = B.summarise(cell, (64, 4096, 256), "float32", 10**9, times, {"numba": KINDS["numba"]}, 0.0)
    got = {r["pass"]: r["GB/s"] for r in rows}
    assert got == pytest.approx({"fwd": values[0] * 10, "bwd": values[1] * 10, "fwd+bwd": sum(values) * 5})


def test_torch_rows_subtract_the_forward_from_their_backward():
    times = fake_times({"numba prange": 100, "np.copyto": 100, "numba chunked": 100}, {"torch": (100, 300)})
    rows, _ = B.summarise("mingru", (2, 3, 4), "float32", 10**9, times, {"torch": ("x.copy()", None, None, True)}, 0)
    assert {r["pass"]: r["ms"] for r in rows} == pytest.approx({"fwd": 100, "bwd": 200, "fwd+bwd": 300})


def test_warnings_name_a_busy_copy_a_wide_spread_the_cache_and_an_implausible_yardstick():
    big = 2**30
    rows = [{"engine": "numba (out=)", "yardstick": "copy", "% of copy": 146.0},
            {"engine": "numba", "yardstick": "x.copy()", "% of copy": 300.0}]
    text = "\n".join(B.warnings(1000, [1.0, 1.1, 5.0], 0.1, rows, ["numba fwd"]))
    assert "the copy ran at 0.1 GB/s" in text and "busy" in text
    assert "numba (out=) faster than the copy" in text and "numba," not in text  # x.copy() rows may beat it
    assert "fit in the" in text and "cache" in text
    assert "wide run-to-run spread" in text and "numba fwd" in text
    assert B.warnings(big, [0.1, 0.1, 0.1], 20.0, rows[1:], []) == []


def test_quick_shape_is_above_the_caches():
    """Each cell's forward and backward move more than this machine's last-level cache (and 500 MiB)."""
    for cell, (fwd, bwd) in B.CELL_VALUES.items():
        moved = (fwd + bwd) * np.prod(B.QUICK_SHAPE) * (8 if cell == "lru" else 4)  # complex64
        assert moved > max(500 * 2**20, B._last_level_cache())


@pytest.mark.parametrize("cell", B.CELLS)
def test_bench_cell_runs_every_cell_with_out_rows_for_numba(cell):
    rows, notes = B.bench_cell(cell, (2, 33, 16), ["numba", "logspace"], repeats=1, torch=False)
    assert {(r["engine"], r["yardstick"]) for r in rows} == {
        ("numba", "x.copy()"), ("numba (out=)", "copy"), ("logspace", "x.copy()")}
    assert all(r["cell"] == cell and r["GB/s"] > 0 for r in rows)
    assert notes[0].startswith(f"{cell} (2, 33, 16) float32: copy = ")
    assert any("fit in the" in n for n in notes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 17, 40), (5, 9, 3)])
def test_access_pattern_reads_and_writes_what_it_says(shape, dtype):
    """Every output row of the no-math pattern is the sum of the input rows (forward), or of the input
    rows and h one row below (backward; row 0 reads h's row 0): each array is read where stated."""
    from mincore.bench_pattern import run_pattern

    rng = np.random.default_rng(0)
    ins = tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))
    h = rng.standard_normal(shape).astype(dtype)
    outs = (np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype))
    run_pattern(ins, None, outs)
    for o in outs:
        np.testing.assert_allclose(o, sum(ins), rtol=1e-6, atol=1e-5)  # summation order
    run_pattern(ins, h, outs)
    below = np.concatenate([h[:, :1], h[:, :-1]], axis=1)
    for o in outs:
        np.testing.assert_allclose(o, sum(ins) + below, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cell", B.CELLS)
def test_access_pattern_moves_the_cells_minimal_traffic(cell):
    """A cell's pattern reads and writes as many (B, T, D) arrays as its kernels' minimal traffic."""
    from mincore.bench_pattern import PATTERNS

    n_fwd, n_bwd, n_out = PATTERNS[cell]
    assert (n_fwd + 1, n_bwd + 1 + n_out) == B.CELL_VALUES[cell]  # + h written / + h read


def test_bench_cell_pattern_rows_and_notes():
    rows, notes = B.bench_cell("minlstm", (2, 33, 16), ["numba"], repeats=1, torch=False, pattern=True)
    from mincore.bench_pattern import PATTERN

    assert {(r["engine"], r["yardstick"]) for r in rows} >= {(PATTERN, "copy"), ("numba (out=)", "copy")}
    note = [n for n in notes if n.startswith("numba (out=) against its access pattern")]
    assert len(note) == 1 and "fwd+bwd" in note[0]


def run(*args):
    return CliRunner().invoke(bench, ["kernels", *args])


def test_cli_cell_all_times_every_cell(tmp_path):
    path = tmp_path / "rows.json"
    r = run("--cell", "all", "--engine", "numba", "--shape", "2,9,16", "--repeats", "1", "--no-torch",
            "--json", str(path))
    assert r.exit_code == 0, r.output
    rows = json.loads(path.read_text())
    assert [c for c in B.CELLS if any(row["cell"] == c for row in rows)] == list(B.CELLS)
    for cell in B.CELLS:
        assert f"{cell}, median of 1 (min-max):" in r.output
    assert "| % of yardstick | yardstick GB/s |" in r.output and "of x.copy() |" in r.output and "of copy |" in r.output


@pytest.mark.parametrize("args, words", [
    (["--gpu", "--cell", "lru"], "mingru only"),
    (["--cell", "scan", "--log-space"], "--log-space applies to mingru and minlstm"),
    (["--cell", "gru"], "'gru' is not one of"),
    (["--gpu", "--pattern"], "drop --gpu"),
])
def test_cli_refuses_cells_it_cannot_time(args, words):
    r = run(*args)
    assert r.exit_code != 0 and words in " ".join(r.output.split()), r.output


def test_cli_quick_times_the_numba_engine_alone(monkeypatch):
    """--quick on the CPU: B.QUICK_SHAPE, the numba engine and no torch (the oracle-like engines and
    torch take minutes at a shape above the caches); recorded without timing anything."""
    seen = []

    def fake(cell, shape, engines, **kw):
        seen.append((cell, shape, list(engines), kw["repeats"], kw["torch"]))
        return [], ["note"]

    monkeypatch.setattr(B, "bench_cell", fake)
    r = run("--quick")
    assert r.exit_code == 0, r.output
    assert seen == [("mingru", B.QUICK_SHAPE, ["numba"], B.QUICK_REPEATS, False)]
    r = run("--quick", "--engine", "logspace", "--cell", "scan")
    assert r.exit_code == 0, r.output
    assert seen[-1][:3] == ("scan", B.QUICK_SHAPE, ["logspace"])


@pytest.mark.parametrize("shape", [(3, 1000, 7), (2, 333, 65)])
def test_every_copy_yardstick_copies(shape):
    """Each copy the bench times as the yardstick writes exactly the source (the streamed one too, at
    chunk edges that fall inside a cache line)."""
    from mincore.bench import copies

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for name, call in copies(x, dst := np.zeros_like(x)).items():
        dst[...] = 0
        call()
        assert np.array_equal(dst, x), name
