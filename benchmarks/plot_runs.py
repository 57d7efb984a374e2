"""Overlay the held-out loss of several `mincore train` runs against steps and wall-clock minutes.

    python benchmarks/plot_runs.py runs/shakespeare-mingru runs/shakespeare-minlstm \
        --target 1.55 --out docs/shakespeare_default.png

Reads each run's metrics.jsonl (eval events) and summary.json (model name); `--target` draws a
horizontal line (e.g. a target of 1.55 nats/char), `--key` picks the held-out figure to plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--key", default="loss")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in args.runs:
        evals = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if e.get("split") == "eval" and args.key in e]
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        label = summary.get("model", run.name)
        axes[0].plot([e["step"] for e in evals], [e[args.key] for e in evals], "o-", ms=3, label=label)
        axes[1].plot([e["wall"] / 60 for e in evals], [e[args.key] for e in evals], "o-", ms=3, label=label)
    for ax, xlabel in zip(axes, ("step", "wall-clock minutes"), strict=True):
        if args.target is not None:
            ax.axhline(args.target, color="grey", ls="--", lw=1, label=f"target {args.target}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"held-out {args.key}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
