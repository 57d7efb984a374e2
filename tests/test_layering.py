"""The layer graph of docs/ARCHITECTURE.md, checked on the source.

The layers form a DAG, not a line: each layer names the layers it may import directly (DEPENDS), and
may import everything those reach. Anything else is an upward import (kernels -> cells) or a
sideways one (autograd -> cells, bench -> autograd), and fails here. Imports are read with ast,
lazy ones inside functions included, with folders mapped to import names as pyproject.toml does
(autograd/ -> mincore.autograd, ...).

An edge in LAZY may only be used inside a function: `mincore.autograd` calls the fused numba
activations of `mincore.kernels` (ARCHITECTURE.md says why), but `import mincore.autograd` must not
load numba. A module not named in LAYERS (a new helper file) may import anything, but a module that
imports it is checked against everything it reaches, so no upward import is smuggled through it.
Also: code imports `mincore.autograd`, never a top-level `autograd` / `tasks` / `cli`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mincore": "mincore", "autograd": "mincore.autograd", "tasks": "mincore.tasks",
           "cli": "mincore.cli"}
LAYERS = {  # module name (or package prefix) -> layer; the longest match wins; "mincore" is exact
    "mincore.backend": "backend",
    "mincore.checks": "checks",
    "mincore.kernels": "kernels",
    "mincore.cells": "cells",
    "mincore": "api",  # mincore/__init__.py: the public array API (re-exports cells and backend)
    "mincore.bench": "bench", "mincore.bench_gpu": "bench", "mincore.bench_pattern": "bench",
    "mincore.torch": "adapters", "mincore.jax": "adapters",
    "mincore.autograd": "autograd",
    "mincore.layers": "layers", "mincore.lru": "layers", "mincore.sequential": "layers",
    "mincore.models": "models",
    "mincore.tasks": "tasks", "mincore.bench_paper": "tasks",  # times training steps of layers
    "mincore.cli": "cli",
}
DEPENDS = {  # layer -> the layers it may import directly (and, through them, what they reach)
    "backend": set(),
    "checks": {"backend"},
    "kernels": {"backend"},
    "cells": {"kernels", "checks"},
    "api": {"cells"},
    "bench": {"api"},
    "adapters": {"api"},  # mincore.torch / mincore.jax: the array API only; nothing in mincore imports them
    "autograd": {"backend", "kernels"},
    "layers": {"api", "autograd"},
    "models": {"layers"},
    "tasks": {"models"},
    "cli": {"tasks", "bench"},
}
LAZY = {("autograd", "kernels")}  # (layer, layer) edges allowed only inside a function


def layer_of(name: str) -> str | None:
    """The layer of a module name, by its longest declared prefix; None for an undeclared module."""
    best = None
    for prefix, layer in LAYERS.items():
        hit = name == prefix or (prefix != "mincore" and name.startswith(prefix + "."))
        if hit and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def reachable(layer: str, lazy_ok: bool) -> set[str]:
    """The layers `layer` may import: itself and the closure of its DEPENDS edges (LAZY edges only
    when lazy_ok)."""
    seen, todo = {layer}, [layer]
    while todo:
        here = todo.pop()
        for nxt in DEPENDS[here]:
            if (here, nxt) in LAZY and not lazy_ok:
                continue
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def module_files() -> dict[str, tuple[Path, bool]]:
    """import name -> (file, is_package) for every .py file under the mapped folders."""
    out = {}
    for folder, pkg in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            name = ".".join([pkg, *(parts[:-1] if is_pkg else parts)])
            out[name] = (path, is_pkg)
    return out


def _module_level_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes that run when the module is imported (not inside a function)."""
    top, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.add(id(node))
        todo.extend(ast.iter_child_nodes(node))
    return top


def imports_of(name: str, path: Path, is_pkg: bool, known) -> dict[str, bool]:
    """mincore (or top-level autograd/tasks/cli) modules that `name` imports -> True when one of the
    imports runs at module level, False when all are inside functions. Relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    top = _module_level_imports(tree)
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known] or [base]
        else:
            continue
        for m in names:
            if m == "mincore" or m.startswith("mincore.") or m.split(".")[0] in ("autograd", "tasks", "cli"):
                found[m] = found.get(m, False) or id(node) in top
    return found


def graph():
    files = module_files()
    return {n: imports_of(n, p, pkg, files) for n, (p, pkg) in files.items()}


def effective(deps, name: str, eager_only: bool) -> dict[str, str]:
    """The declared modules `name` depends on -> through which import, with undeclared modules
    replaced by what they import (transitively). eager_only: follow module-level imports only."""
    out, seen, todo = {}, {name}, [(d, d) for d, eager in deps[name].items() if eager or not eager_only]
    while todo:
        mod, via = todo.pop()
        if layer_of(mod) is not None:
            out.setdefault(mod, via)
        elif mod in deps and mod not in seen:
            seen.add(mod)
            todo += [(d, via) for d, eager in deps[mod].items() if eager or not eager_only]
    return out


def violations(deps) -> list[str]:
    bad = []
    for name in sorted(deps):
        layer = layer_of(name)
        if layer is None:
            continue  # undeclared: checked through every declared module that imports it
        eager = effective(deps, name, eager_only=True)
        for mod, via in sorted(effective(deps, name, eager_only=False).items()):
            if layer_of(mod) in reachable(layer, lazy_ok=mod not in eager):
                continue
            how = "" if via == mod else f" (through {eager.get(mod, via)})"
            when = "at module level" if mod in eager else "inside a function"
            bad.append(f"{name} ({layer}) imports {mod} ({layer_of(mod)}){how} {when}")
    return bad


def test_every_import_follows_the_layer_graph():
    bad = violations(graph())
    assert not bad, ("imports outside the layer graph (docs/ARCHITECTURE.md, Layers; "
                     "tests/test_layering.py DEPENDS):\n" + "\n".join(bad))


def test_no_top_level_autograd_tasks_cli_imports():
    bad = [f"{n} imports {d}" for n, ds in graph().items() for d in ds
           if d.split(".")[0] in ("autograd", "tasks", "cli")]
    assert not bad, "import mincore.autograd / mincore.tasks / mincore.cli instead:\n" + "\n".join(bad)


def test_every_layer_is_declared():
    assert set(LAYERS.values()) == set(DEPENDS), set(LAYERS.values()) ^ set(DEPENDS)
    assert all(d in DEPENDS for ds in DEPENDS.values() for d in ds)
    assert all(a in DEPENDS and b in DEPENDS[a] for a, b in LAZY)


def test_the_checker_sees_the_tree():
    """Guards the test itself: the known modules and edges are found, and planted violations of each
    kind (upward, sideways, an eager use of a lazy edge, one smuggled through an undeclared module)
    are caught."""
    deps = graph()
    assert {"mincore", "mincore.backend", "mincore.cells", "mincore.kernels.reference"} <= set(deps)
    assert deps["mincore.autograd.elementwise"].get("mincore.kernels.numba_act") is False  # lazy
    assert deps["mincore.cells"].get("mincore.backend") is True
    planted = {
        "mincore.kernels.fake": {"mincore.cells": True},  # upward
        "mincore.autograd.fake": {"mincore.cells": False},  # sideways, even inside a function
        "mincore.bench_fake": {"mincore.autograd.nn": True},  # undeclared, so it may ...
        "mincore.bench": {**deps["mincore.bench"], "mincore.bench_fake": True},  # ... but bench may not
        "mincore.autograd.eager": {"mincore.kernels.numba_act": True},  # lazy edge used eagerly
        "mincore.layers_fake": {"mincore.torch": False},  # undeclared, imports an adapter ...
        "mincore.layers": {**deps["mincore.layers"], "mincore.layers_fake": False},  # ... so layers may not
        "mincore.torch.fake": {"mincore.autograd": False},  # an adapter importing the autograd
    }
    bad = violations({**deps, **planted})
    for who, what in [("mincore.kernels.fake", "mincore.cells (cells)"),
                      ("mincore.autograd.fake", "mincore.cells (cells)"),
                      ("mincore.bench (bench)", "mincore.autograd.nn (autograd) (through mincore.bench_fake)"),
                      ("mincore.autograd.eager", "mincore.kernels.numba_act (kernels) at module level"),
                      ("mincore.layers (layers)", "mincore.torch (adapters) (through mincore.layers_fake)"),
                      ("mincore.torch.fake", "mincore.autograd (autograd) inside a function")]:
        assert any(b.startswith(who) and what in b for b in bad), (who, bad)
    assert len(bad) == 6, bad


def test_the_adapters_are_in_the_graph():
    """mincore.torch (and mincore.jax, where present) are checked as the adapters layer, and their
    imports are seen (an adapter file the checker missed would pass anything)."""
    deps = graph()
    assert "mincore.torch" in deps and layer_of("mincore.torch") == "adapters"
    assert "mincore.torch.ops" in deps and deps["mincore.torch.ops"].get("mincore") is True
    assert deps["mincore.torch.modules"].get("mincore.torch.ops") is True
    assert all(layer_of(n) == "adapters" for n in deps if n.startswith(("mincore.torch.", "mincore.jax")))
    users = [f"{n} imports {d}" for n, ds in deps.items() for d in ds
             if d.startswith(("mincore.torch", "mincore.jax")) and layer_of(n) != "adapters"]
    assert not users, users


@pytest.mark.parametrize("name,layer", [
    ("mincore", "api"), ("mincore.checks", "checks"), ("mincore.kernels.logspace", "kernels"),
    ("mincore.bench_gpu", "bench"), ("mincore.autograd.tensor", "autograd"), ("mincore.cli.main", "cli"),
    ("mincore.torch", "adapters"), ("mincore.torch.ops", "adapters"), ("mincore.jax", "adapters"),
    ("mincore.torchish", None), ("mincore.backendish", None)])
def test_layer_of(name, layer):
    assert layer_of(name) == layer


@pytest.mark.parametrize("upper,lower,ok", [
    ("cli", "bench", True), ("tasks", "bench", False), ("layers", "kernels", True),
    ("autograd", "cells", False), ("cells", "autograd", False), ("kernels", "checks", False),
    ("bench", "autograd", False), ("adapters", "autograd", False), ("models", "tasks", False),
    ("adapters", "cells", True), ("adapters", "checks", True), ("adapters", "backend", True),
    ("adapters", "layers", False), ("layers", "adapters", False), ("cli", "adapters", False),
    ("api", "adapters", False)])
def test_reachable(upper, lower, ok):
    assert (lower in reachable(upper, lazy_ok=True)) is ok


def test_every_package_is_shipped():
    """pyproject.toml lists packages one by one (package-dir maps the folders): a new subpackage
    missing from the list would work in an editable install and be absent from a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {n for n, (_, is_pkg) in module_files().items() if is_pkg}
    assert packages == set(setup["packages"]), packages ^ set(setup["packages"])
    dirs = {pkg: (ROOT / setup["package-dir"][pkg]).resolve() for pkg in setup["package-dir"]}
    assert dirs == {pkg: (ROOT / folder).resolve() for folder, pkg in FOLDERS.items()}


def test_importing_mincore_loads_no_engine_or_framework():
    """`import mincore` and `import mincore.autograd` load neither numba (engines load on first use)
    nor torch, cupy or jax (optional extras)."""
    code = ("import sys, mincore, mincore.autograd; "
            "print(' '.join(m for m in ('numba', 'torch', 'cupy', 'jax') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", r.stdout
