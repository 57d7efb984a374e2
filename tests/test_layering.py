"""The layer order of DESIGN.md, checked on the source: every module imports only its own layer or
layers to its left,

    backend (checks) -> kernels -> cells -> autograd -> layers -> models -> tasks -> cli

by parsing every import (lazy ones inside functions included) with ast. Folders map to their import
names as pyproject.toml does (autograd/ -> mincore.autograd, ...). A module not named in LAYERS (a new
helper file) takes the highest layer it imports, so it can be added freely but cannot smuggle an
upward import through itself; the package `mincore` itself (its __init__) is ranked the same way.
Also: code imports `mincore.autograd`, never a top-level `autograd` / `tasks` / `cli` (DESIGN.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"mincore": "mincore", "autograd": "mincore.autograd", "tasks": "mincore.tasks",
           "cli": "mincore.cli"}
LAYERS = {  # module-name prefix -> rank; the longest matching prefix wins
    "mincore.backend": 0, "mincore.checks": 0,
    "mincore.kernels": 1,
    "mincore.cells": 2,
    "mincore.autograd": 3,
    "mincore.layers": 4,
    "mincore.models": 5,
    "mincore.tasks": 6,
    "mincore.cli": 7,
}
NAMES = {r: n for n, r in sorted(LAYERS.items(), key=lambda kv: -kv[1])}


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


def imports_of(name: str, path: Path, is_pkg: bool, known) -> set[str]:
    """Absolute names of the mincore modules that `name` imports (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            found.update(subs or [base])
    return {m for m in found if m == "mincore" or m.startswith("mincore.")} | \
        {m for m in found if m.split(".")[0] in ("autograd", "tasks", "cli")}


def declared_rank(name: str) -> int | None:
    best = None
    for prefix, rank in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def graph():
    files = module_files()
    return {n: imports_of(n, p, pkg, files) for n, (p, pkg) in files.items()}


def ranks(deps) -> dict[str, int]:
    """Declared ranks, and for undeclared modules the highest rank they import (to a fixpoint)."""
    rank = {n: declared_rank(n) for n in deps}
    for _ in range(len(deps) + 1):
        changed = False
        for n, ds in deps.items():
            if declared_rank(n) is None:
                new = max([rank.get(d) or 0 for d in ds] + [0])
                changed |= rank[n] != new
                rank[n] = new
        if not changed:
            break
    return rank


def violations(deps) -> list[str]:
    rank = ranks(deps)
    bad = []
    for n, ds in sorted(deps.items()):
        if declared_rank(n) is None:
            continue  # undeclared modules are ranked by their imports: they cannot violate
        for d in sorted(ds):
            r = rank.get(d, declared_rank(d))
            if r is not None and r > rank[n]:
                bad.append(f"{n} ({NAMES[rank[n]]}) imports {d} ({NAMES[r]}), a higher layer")
    return bad


def test_every_import_points_down_or_sideways():
    bad = violations(graph())
    assert not bad, "upward imports (DESIGN.md layer order):\n" + "\n".join(bad)


def test_no_top_level_autograd_tasks_cli_imports():
    bad = [f"{n} imports {d}" for n, ds in graph().items() for d in ds
           if d.split(".")[0] in ("autograd", "tasks", "cli")]
    assert not bad, "import mincore.autograd / mincore.tasks / mincore.cli instead:\n" + "\n".join(bad)


def test_the_checker_sees_the_tree():
    """Guards the test itself: the known modules are found and a planted violation is caught."""
    deps = graph()
    assert {"mincore.backend", "mincore.cells", "mincore.kernels.reference"} <= set(deps)
    assert "mincore.backend" in deps["mincore.kernels.reference"] or \
        "mincore.kernels.gates" in deps["mincore.kernels.reference"]
    planted = {"mincore.kernels.fake": {"mincore.cells"},  # kernels -> cells: upward
               "mincore.helper": {"mincore.layers"},  # undeclared, so ranked as layers ...
               "mincore.cells": deps["mincore.cells"] | {"mincore.helper"}}  # ... cells may not use it
    bad = violations({**deps, **planted})
    assert any(b.startswith("mincore.kernels.fake") for b in bad), bad
    assert any(b.startswith("mincore.cells (") and "mincore.helper" in b for b in bad), bad


@pytest.mark.parametrize("name,rank", [("mincore.checks", 0), ("mincore.kernels.logspace", 1),
                                       ("mincore.autograd.tensor", 3), ("mincore.cli.main", 7)])
def test_declared_ranks(name, rank):
    assert declared_rank(name) == rank
