"""`mincore bench paper` (mincore.bench_paper): a smoke run with tiny sizes (rows, JSON schema, the plot
file), its refusals, and the pieces it is built from (peak memory, speed-ups, which models run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mincore import backend as mb
from mincore import bench_paper as P
from mincore.cli.bench import bench

MINCORE = ["mingru", "minlstm", "gru", "lstm"]
TORCH = ["torch-mingru", "torch-gru", "torch-lstm"]


def run(*args):
    return CliRunner().invoke(bench, ["paper", *args])


def has_torch() -> bool:
    return P.import_torch() is not None


def test_quick_smoke_run_writes_the_rows_and_the_plot(tmp_path):
    js, png = tmp_path / "rows.json", tmp_path / "fig.png"
    r = run("--quick", "--lengths", "4,8", "--batch", "2", "--hidden", "3", "--repeats", "1",
            "--sequential-max", "4", "--json", str(js), "--plot", str(png))
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    assert set(data) == {"rows", "device_name"}
    rows = data["rows"]
    for row in rows:
        assert set(row) == {"model", "T", "B", "hidden", "device", "ms", "peak_mb"}
        assert (row["B"], row["hidden"], row["device"]) == (2, 3, "cpu") and row["ms"] > 0
        assert row["peak_mb"] is None or row["peak_mb"] > 0
        assert row["peak_mb"] is not None or row["model"].startswith("torch")
    models = MINCORE + (TORCH if has_torch() else [])
    got = {(row["model"], row["T"]) for row in rows}
    # the sequential models stop at --sequential-max, the parallel ones run at every length
    assert got == {(m, T) for m in models for T in (4, 8) if T == 4 or m not in P.SEQUENTIAL}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "| T | mingru | minlstm | gru | lstm |" in r.output
    assert "| 4 | mingru | gru |" in r.output  # the speed-up table


def test_model_option_selects_the_models():
    r = run("--lengths", "5", "--batch", "1", "--hidden", "2", "--repeats", "1", "--model", "gru", "--model", "mingru")
    assert r.exit_code == 0, r.output
    assert "| T | mingru | gru |" in r.output and "lstm" not in r.output.replace("--", "")


@pytest.mark.parametrize("args, words", [
    (["--lengths", "64,x"], "expected lengths such as 64,256,512"),
    (["--lengths", "0,8"], "lengths must be integers >= 1"),
    (["--hidden", "0"], "x>=1"),
    (["--model", "mamba"], "'mamba' is not one of"),
    (["--json", ""], "expected a path"),
])
def test_bad_options_are_refused_naming_them(args, words):
    r = run(*args)
    assert r.exit_code != 0 and words in r.output, r.output


def test_a_step_too_large_for_this_machine_is_refused_before_any_work():
    r = run("--lengths", str(2 ** 40), "--batch", "64", "--hidden", "256")
    assert r.exit_code != 0 and "--lengths" in r.output and "memory" in r.output, r.output


@pytest.mark.skipif(mb.engines()["cupy"]["available"], reason="checks the refusal where no GPU is usable")
def test_gpu_without_a_device_is_one_line():
    r = run("--device", "gpu", "--quick")
    assert r.exit_code != 0 and "device 'gpu' needs CuPy on a CUDA device" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 2
    with pytest.raises(ValueError, match="device 'gpu' needs CuPy"):
        P.array_module("gpu")


@pytest.mark.parametrize("kw, words", [
    ({"device": "tpu"}, "device must be 'cpu' or 'gpu', got 'tpu'"),
    ({"models": ("mamba",)}, "unknown model 'mamba'"),
    ({"batch": 0}, "batch must be >= 1, got 0"),
    ({"lengths": ()}, "lengths must be >= 1"),
])
def test_run_refuses_bad_arguments(kw, words):
    with pytest.raises(ValueError, match=words):
        P.run(**{"lengths": (4,), "batch": 1, "hidden": 2, "repeats": 1, **kw})


def test_peak_tracemalloc_counts_numpy_buffers_and_not_what_existed_before():
    held = np.ones(10 ** 6)  # noqa: F841 (allocated before the step: not counted)

    def step():
        a = np.ones(2 * 10 ** 6)  # 16 MB, freed before the next
        del a
        b = np.ones(10 ** 6)  # 8 MB
        del b
    peak = P.peak_tracemalloc(step)
    assert 16e6 <= peak < 17e6


def test_peak_torch_cpu_counts_torch_allocations():
    torch = pytest.importorskip("torch")

    def step():
        a = torch.ones(2 * 10 ** 6, dtype=torch.float64)
        del a
        torch.ones(10 ** 6, dtype=torch.float64)
    peak = P.peak_torch_cpu(step, torch)
    assert peak is None or 16e6 <= peak < 17e6


def test_sequential_models_stop_at_sequential_max_and_torch_needs_torch():
    assert P.models_at(512, P.MODELS, 256, None) == ["mingru", "minlstm"]
    assert P.models_at(256, P.MODELS, 256, None) == MINCORE
    assert P.models_at(512, P.MODELS, 256, object()) == ["mingru", "minlstm", "torch-mingru"]


def rows_of(table):
    return [{"model": m, "T": T, "B": 1, "hidden": 1, "device": "cpu", "ms": ms, "peak_mb": mb}
            for m, T, ms, mb in table]


def test_speedups_pair_each_parallel_model_with_its_sequential_ones():
    rows = rows_of([("mingru", 64, 2.0, 10.0), ("gru", 64, 50.0, 40.0), ("torch-gru", 64, 20.0, None),
                    ("minlstm", 64, 4.0, 12.0), ("mingru", 128, 3.0, 20.0)])
    sp = {(s["model"], s["over"], s["T"]): s for s in P.speedups(rows)}
    assert set(sp) == {("mingru", "gru", 64), ("mingru", "torch-gru", 64)}  # no lstm, no gru at 128
    assert sp["mingru", "gru", 64]["speedup"] == 25.0 and sp["mingru", "gru", 64]["memory_ratio"] == 0.25
    assert sp["mingru", "torch-gru", 64]["speedup"] == 10.0 and sp["mingru", "torch-gru", 64]["memory_ratio"] is None
    text = P.markdown(rows)
    assert "| 64 | 2.0 ms / 10 MB |" in text and "| 64 | mingru | gru | 25.0x | 0.25 |" in text
    assert "20.0 ms / - |" in text  # a memory the profiler could not give


def test_threads_limit_blas_numba_and_torch_in_the_block_only():
    import numba
    from threadpoolctl import threadpool_info

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    torch = P.import_torch()
    before = blas(), numba.get_num_threads(), torch and torch.get_num_threads()
    with P.cpu_threads(1, torch):
        assert blas() == {1} and numba.get_num_threads() == 1
        assert torch is None or torch.get_num_threads() == 1
    assert (blas(), numba.get_num_threads(), torch and torch.get_num_threads()) == before


def test_threads_option_is_named_in_the_output():
    r = run("--lengths", "4", "--batch", "1", "--hidden", "2", "--repeats", "1", "--threads", "1", "--model", "gru")
    assert r.exit_code == 0 and "1 thread)" in r.output, r.output
