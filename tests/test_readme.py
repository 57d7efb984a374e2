"""Every Python example in README.md and docs/*.md runs as printed: each ```python block in its own
namespace, in the order of the file (so an example can never break silently). Blocks that import an
optional framework (torch, jax) skip where it is not installed."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(f.relative_to(ROOT).as_posix(), i, code) for f in FILES
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", f.read_text(), flags=re.S), 1)]
OPTIONAL = ("torch", "jax")


def test_readme_has_python_examples():
    assert sum(name == "README.md" for name, _, _ in BLOCKS) >= 2, "README lost its Python examples"


@pytest.mark.parametrize("name,i,code", BLOCKS, ids=[f"{n}:{i}" for n, i, _ in BLOCKS])
def test_documented_example_runs(name, i, code):
    for mod in OPTIONAL:
        if re.search(rf"^\s*(import|from) {mod}\b", code, flags=re.M) and importlib.util.find_spec(mod) is None:
            pytest.skip(f"{name} block {i} needs {mod}, which is not installed")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{name} python block {i}", "exec"), {"__name__": "__doc_example__"})
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", out.getvalue())]
    if name == "README.md" and losses:  # the training example: the loss it prints falls as README says
        assert losses[0] > 2.0 and losses[-1] < 0.05, losses
