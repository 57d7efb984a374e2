"""The files of one run directory (tasks/loop.py writes them):

    config.json    the run's settings          metrics.jsonl  one JSON object per event
    checkpoint.h5  at each eval and on a stop  summary.json   final held-out metrics, steps, time
    learning_curve.png                         .lock          held while a run trains in the folder

Every file is strict JSON (a non-finite number is written as null) and gets the mode the umask gives.
Under MPI rank 0 alone writes them; the other ranks hold a PeerRunDir, whose writes do nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from mincore.autograd.checkpoint import remove_stale_temps
from mincore.backend import cpu_count

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

__all__ = ["FILES", "LOCK", "RunDir", "PeerRunDir", "RunFolderBusy", "machine", "plot_curves"]

FILES = ("config.json", "metrics.jsonl", "checkpoint.h5", "summary.json", "learning_curve.png")
LOCK = ".lock"
_RUN = ("config.json", "metrics.jsonl", "checkpoint.h5", "summary.json")  # any of them: the folder holds a run
_HELD: set[Path] = set()  # run folders this process holds locked


class RunFolderBusy(RuntimeError):
    """Another process is training in the run folder."""


class RunDir:
    """Paths of a run directory's FILES (attributes config, metrics, checkpoint, summary,
    learning_curve), its lock, its event log and atomic JSON writes."""

    def __init__(self, out):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            setattr(self, name.split(".")[0], self.dir / name)

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the folder for the block, or raise RunFolderBusy at once. The
        lock is the OS's (flock on .lock, which keeps the holder's pid): a killed process holds none."""
        if fcntl is None:  # pragma: no cover
            yield self
            return
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "not known yet"
                raise RunFolderBusy(f"{self.dir} is in use by another training run (pid {pid}); wait for it "
                                    f"to end or train into another folder") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD.add(self.dir.resolve())
            try:
                yield self
            finally:
                _HELD.discard(self.dir.resolve())
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing releases the lock

    def prepare(self, resume: bool, force: bool):
        """Make the folder ready for a run (call it holding the lock): remove what a killed writer left;
        refuse a folder that holds a run unless resuming it or `force` (then its files are removed).
        A folder inside one this process holds locked belongs to that run (rl's baseline in out/bc)."""
        if resume and force:
            raise ValueError("resume=True continues the run in the folder and force=True replaces it; "
                             "pass one of them, not both")
        self.remove_temporaries()
        if resume:
            return
        present = [n for n in _RUN if (self.dir / n).exists()]
        nested = any(p in _HELD for p in self.dir.resolve().parents)
        if present and not (force or nested):
            raise FileExistsError(f"{self.dir} holds a run ({', '.join(present)}); continue it with resume "
                                  f"(--resume), replace it with force (--force), or train into another folder")
        for name in FILES:
            (self.dir / name).unlink(missing_ok=True)

    def remove_temporaries(self):
        """The temporary files of a writer killed mid-write: this module's and save_checkpoint's."""
        for name in FILES:
            _temporary(self.dir / name).unlink(missing_ok=True)
        remove_stale_temps(self.dir)  # of a save_checkpoint killed mid-write

    def log(self, **event):
        with open(self.metrics, "a") as f:
            f.write(_dumps(event) + "\n")

    def events(self):
        """The logged events; a last line cut short (a killed process, a full disk) is left out."""
        if not self.metrics.exists():
            return []
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines[:-1]]
        with contextlib.suppress(ValueError):
            events += [json.loads(line) for line in lines[-1:]]
        return events

    def keep_events_until(self, step: int):
        """Drop the events after `step` (a resumed run repeats the steps after its checkpoint)."""
        kept = [e for e in self.events() if e["step"] <= step]
        self._write_atomic(self.metrics, "".join(_dumps(e) + "\n" for e in kept))

    def write_json(self, path, obj):
        """Write `obj` as JSON atomically: a reader never sees half a file."""
        self._write_atomic(Path(path), json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")

    @staticmethod
    def _write_atomic(path: Path, text: str):
        """Through a temporary file, flushed to disk, then renamed over `path`: a crash or a full disk
        leaves the old file whole and no temporary behind."""
        tmp = _temporary(path)
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class PeerRunDir:
    """The run directory as a rank other than 0 sees it: the same paths (for messages), and writes
    that do nothing, since rank 0 writes every file. The folder itself is not touched."""

    def __init__(self, out):
        self.dir = Path(out)
        for name in FILES:
            setattr(self, name.split(".")[0], self.dir / name)

    def log(self, **event):
        pass

    def write_json(self, path, obj):
        pass


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _finite(obj):
    """`obj` with every non-finite float replaced by None (JSON null): strict parsers refuse NaN."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(event: dict) -> str:
    return json.dumps(_finite(event), allow_nan=False)


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
            pts = [(e["step"], e[key]) for e in events if e.get("split") == split
                   and isinstance(e.get(key), (int, float)) and "event" not in e]
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
