#!/usr/bin/env bash
# One-call GPU check for a session that has a device (e.g. the `run` tool on an H100):
#   bash benchmarks/gpu_check.sh            # tests + benchmark, markdown on stdout
#   QUICK=1 bash benchmarks/gpu_check.sh    # gpu tests of tests/test_gpu.py only, 10 repeats
#   NUMPY_COMPAT=1 ...                      # numba-cuda older than NumPy 2.5 (benchmarks/numpy_compat)
# Writes gpu_tests.txt, gpu_bench.md and gpu_bench.json to $OUT (or ./gpu_check_out).
# Needs cupy (cupy-cuda12x or -13x), numba (numba-cuda for recent drivers), pytest, hypothesis;
# torch is optional (the paper's log-space minGRU baseline). Installs nothing from the network.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
# NUMPY_COMPAT=1: restore np.row_stack for numba-cuda releases older than NumPy 2.5 (test env only)
[ "${NUMPY_COMPAT:-0}" = 1 ] && export PYTHONPATH="$PWD/benchmarks/numpy_compat:${PYTHONPATH:-}"

echo "## environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
$PY - <<'PY'
import importlib
for m in ("numpy", "cupy", "numba", "numba_cuda", "torch", "pytest", "hypothesis"):
    try:
        print(f"{m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{m} MISSING ({type(e).__name__})")
PY
# the package maps autograd/, tasks/, cli/ into mincore.*: an offline editable install, else PYTHONPATH
if ! $PY -c "import mincore.autograd" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
$PY -c "import json, mincore; print(json.dumps({k: v['reason'] or 'ok' for k, v in mincore.engines().items()}, indent=1))"

echo "## gpu tests"
if [ "${QUICK:-0}" = 1 ]; then TESTS=tests/test_gpu.py; REPEATS=10; else TESTS=tests; REPEATS=50; fi
# pytest-xdist (in the GPU image) spreads the tests over processes: each has its own CUDA context
XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${NPROC:-6}"
timeout "${TEST_TIMEOUT:-360}" $PY -m pytest -m gpu -q -rfEs -p no:cacheprovider --durations=10 $XDIST $TESTS \
  > "$OUT/gpu_tests.txt" 2>&1
TEST_RC=$?
tail -40 "$OUT/gpu_tests.txt"
echo "pytest -m gpu exit code: $TEST_RC"

# `mincore bench kernels` without relying on the console script being on PATH
bench() { $PY -c 'from mincore.cli.main import main; main(prog_name="mincore")' bench kernels --gpu --log-space "$@"; }

echo "## benchmark (CUDA events, median of $REPEATS; copy bandwidth measured in the same run)"
bench --engine cupy --engine numba-cuda --repeats "$REPEATS" --json "$OUT/gpu_bench.json" | tee "$OUT/gpu_bench.md"
BENCH_RC=${PIPESTATUS[0]}
echo "bench exit code: $BENCH_RC"

if [ "${QUICK:-0}" != 1 ]; then
  echo "## plan sweep (cupy; forward and backward may take different plans): tune mincore/kernels/gpu_common.plan from this"
  for shape in 8,65536,256 64,4096,256; do
    for plan in dpb=8,nseg=32 dpb=16,nseg=16 dpb=32,nseg=8 dpb=64,nseg=4 dpb=128,nseg=2 dpb=128,nseg=1; do
      bench --shape $shape --engine cupy --no-torch --repeats 20 --plan $plan,C=1 | grep "| cupy"
    done
  done 2>&1 | tee "$OUT/gpu_plan_sweep.md"
fi
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
