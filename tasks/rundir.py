"""The files of one run directory (tasks/loop.py writes them):

    config.json    the run's settings          metrics.jsonl  one JSON object per event
    checkpoint.h5  at each eval and on Ctrl-C  summary.json   final held-out metrics, steps, time
    learning_curve.png
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from mincore.backend import cpu_count

__all__ = ["FILES", "RunDir", "machine", "plot_curves"]

FILES = ("config.json", "metrics.jsonl", "checkpoint.h5", "summary.json", "learning_curve.png")


class RunDir:
    """Paths of a run directory's FILES (attributes config, metrics, checkpoint, summary,
    learning_curve), its event log and atomic JSON writes."""

    def __init__(self, out):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            setattr(self, name.split(".")[0], self.dir / name)

    def log(self, **event):
        with open(self.metrics, "a") as f:
            f.write(json.dumps(event) + "\n")

    def events(self):
        if not self.metrics.exists():
            return []
        with open(self.metrics) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_events_until(self, step: int):
        """Drop the events after `step` (a resumed run repeats the steps after its checkpoint)."""
        kept = [e for e in self.events() if e["step"] <= step]
        self.metrics.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def clear(self):
        """Remove the files of an earlier run (config.json is rewritten anyway)."""
        for p in (self.metrics, self.summary, self.learning_curve, self.checkpoint):
            p.unlink(missing_ok=True)

    def write_json(self, path, obj):
        """Write `obj` as JSON through a temporary file and a rename: a reader never sees half a file."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)


def machine() -> dict:
    """What ran a training run (config.json and summary.json keep it)."""
    try:
        import numba

        threads = numba.get_num_threads()
    except Exception:  # pragma: no cover - numba is a dependency
        threads = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": cpu_count(), "numba_threads": threads, "python": platform.python_version(),
            "numpy": np.__version__}


def plot_curves(events, path, metric, title=""):
    """Loss (train and held-out) against steps, and the task metric against steps, as a PNG
    (matplotlib, Agg). When the metric is the loss itself, the second panel shows every held-out
    figure (e.g. Shakespeare's loss and stateful_loss) against wall-clock minutes instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [(axes[0], "loss", "step")]
    if metric != "loss":
        panels.append((axes[1], metric, "step"))
    for ax, key, _ in panels:
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(e["step"], e[key]) for e in events if e.get("split") == split and key in e
                   and "event" not in e]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label="held-out" if split == "eval" else split)
    if metric == "loss":
        evals = [e for e in events if e.get("split") == "eval" and "event" not in e and "wall" in e]
        keys = [k for k in (evals[0] if evals else {}) if k not in ("step", "split", "lr", "wall")]
        for key in keys:
            pts = [(e["wall"] / 60, e[key]) for e in evals if isinstance(e.get(key), (int, float))]
            if pts:
                axes[1].plot(*zip(*pts, strict=True), "o-", ms=3, label=f"held-out {key}")
        panels.append((axes[1], "held-out loss", "wall-clock minutes"))
    for ax, key, xlabel in panels:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
