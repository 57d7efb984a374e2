"""Shared pytest set-up: hypothesis profiles, the `gpu` marker, and the engine-parametrised `backend`.

Profiles: `dev` (default, a few examples) and `ci` (more examples, derandomised so a red CI run is
reproducible); both with deadline=None because numba compiles on first call. Choose with
HYPOTHESIS_PROFILE=dev|ci; `ci` is the default when the CI environment variable is set.

`backend` runs a test body once per engine registered in mincore.backend, so a new engine joins every
engine-parametrised test by registering itself. A test body moves its inputs with
`backend.to_device` and its results back with `backend.to_host`, so the same bodies also serve device
engines (see `make_backend`): here, engines whose native arrays are not NumPy are skipped with the
reason (tests/test_gpu*.py covers them), as are engines that cannot run on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from mincore import backend as mb

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=12, **_common)
settings.register_profile("ci", max_examples=20, derandomize=True, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


# --------------------------------------------------------------------------------------------
# the gpu marker: skip unless a CUDA device is usable (decided by mincore.backend's own probes)


def gpu_unusable_reason() -> str | None:
    """None when CuPy or numba CUDA can run on a real device here, else why not."""
    if mb.cudasim_enabled():
        return "NUMBA_ENABLE_CUDASIM=1: the CUDA simulator is not a device"
    info = mb.engines()
    for name in ("cupy", "numba-cuda"):
        if name in info and info[name]["available"]:
            return None
    return "; ".join(f"{n}: {info[n]['reason']}" for n in ("cupy", "numba-cuda") if n in info)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return  # never probe CuPy when no gpu test was collected: keeps CPU runs fast
    reason = gpu_unusable_reason()
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"no usable CUDA device: {reason}"))


# --------------------------------------------------------------------------------------------
# engine backends


@dataclass(frozen=True)
class Backend:
    """An engine and how to move arrays to the arrays it takes and back."""

    engine: str
    to_device: Callable  # numpy array -> the engine's array type
    to_host: Callable  # engine result -> numpy array
    impl: object  # the engine's implementation module (DTYPES, POSITIVE_GATES, ...)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The engine's compute precisions among float32, float64 (float16 storage, where an engine
        offers it, is tested by that engine's own tests: these tolerances are for 32/64 bits)."""
        names = {np.dtype(d).name for d in self.impl.DTYPES}
        return tuple(d for d in ("float32", "float64") if d in names)

    @property
    def positive_gates(self) -> bool:
        """True when the engine needs a > 0 (and lam != 0): log-space engines."""
        return bool(getattr(self.impl, "POSITIVE_GATES", False))

    def skip_unless_dtype(self, dtype) -> None:
        real = np.empty(0, dtype).real.dtype.name
        if real not in self.dtypes:
            pytest.skip(f"engine {self.engine!r} supports {list(self.dtypes)}, not {real}")


def make_backend(engine: str, device: bool = False) -> Backend:
    """A Backend for `engine`, or pytest.skip with the reason it cannot run. device=True builds a
    CuPy-array backend (for the GPU test modules); device=False takes NumPy-native engines only."""
    info = mb.engines()[engine]
    if not info["available"]:
        pytest.skip(f"engine {engine!r} cannot run here: {info['reason']}")
    if device:
        import cupy

        _, impl = mb.get_engine(engine, cupy)
        return Backend(engine, cupy.asarray, cupy.asnumpy, impl)
    if "numpy" not in info["arrays"]:
        pytest.skip(f"engine {engine!r} takes {info['arrays']} arrays, not NumPy "
                    "(device engines are tested in tests/test_gpu*.py and tests/test_cudasim*.py)")
    _, impl = mb.get_engine(engine, np)
    return Backend(engine, np.ascontiguousarray, np.asarray, impl)


@pytest.fixture(scope="session", params=mb.engine_names())
def backend(request) -> Backend:
    return make_backend(request.param)

