"""README's Python examples run as printed: each ```python block in its own namespace, in order."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2, "README lost its Python examples"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), {"__name__": "__readme__"})
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", out.getvalue())]
    if losses:  # the training example: the loss it prints falls as README says
        assert losses[0] > 2.0 and losses[-1] < 0.05, losses
