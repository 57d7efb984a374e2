"""The one training loop every task shares (copy, shakespeare, rl): read it top to bottom.

A task is an object with
    model                     a mincore.autograd Module
    metric, higher_is_better  the held-out number early stopping and the progress bar watch
    param_groups()            AdamW parameter groups (which parameters decay)
    batch(rng, size)          a training batch drawn from the numpy Generator `rng`
    loss(batch)               (scalar loss Tensor, {name: float} training metrics)
    evaluate()                {name: float} on the fixed held-out set, "loss" included; no RNG use
and its Config derives from LoopConfig below. Files written to `out`:
    config.json    the run's settings          metrics.jsonl  one JSON object per event
    checkpoint.h5  at each eval and on Ctrl-C  summary.json   final held-out metrics, steps, time
    learning_curve.png
Resuming restores parameters, AdamW moments, the step, the data Generator and every dropout
Generator, so on the CPU a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mincore.autograd import load_checkpoint, optim, save_checkpoint

__all__ = ["LoopConfig", "NonFiniteLoss", "train", "FILES"]

FILES = ("config.json", "metrics.jsonl", "checkpoint.h5", "summary.json", "learning_curve.png")


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000                   # optimizer steps (the cosine schedule ends here)
    batch_size: int = 64                # sequences per optimizer step
    micro_batch: int = 0                # sequences per forward/backward (0 or >= batch: whole batch)
    lr: float = 1e-3                    # peak AdamW learning rate
    warmup: int = 100                   # linear warmup steps, then cosine decay to lr * min_lr_factor
    min_lr_factor: float = 0.0          # final lr as a fraction of the peak
    weight_decay: float = 0.05          # decoupled decay on weight matrices (task decides which)
    betas: tuple = (0.9, 0.999)         # AdamW moment decay rates
    clip: float = 1.0                   # global gradient-norm clip (0: off)
    eval_every: int = 250               # evaluate + checkpoint every this many steps (and at the end)
    log_every: int = 10                 # training metrics to metrics.jsonl every this many steps
    patience: int = 0                   # stop after this many evals without improvement (0: never)
    seed: int = 0                       # model init, dropout and training data
    engine: str | None = None           # kernel engine (None: numba on CPU, cupy on GPU)

    def validate(self):
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        mb = min(self.micro_batch or self.batch_size, self.batch_size)
        if mb < 1 or self.batch_size % mb:
            raise ValueError(f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")


def preset_config(presets: dict, preset: str, **overrides):
    """presets[preset] with the given fields replaced (None values are ignored)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(presets)}")
    return dataclasses.replace(presets[preset], **{k: v for k, v in overrides.items() if v is not None})


def config_from_dict(cls, d: dict, task: str):
    """The Config saved in config.json / a checkpoint (JSON lists back to tuples); unknown fields refused."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {task}-task config fields {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class NonFiniteLoss(RuntimeError):
    """Raised after a clean stop on a NaN/inf loss or gradient; the last good checkpoint is kept."""


def _rngs(model):
    """The Generators of every module that draws random numbers (dropout), in module order."""
    return [m.rng for m in model.modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]


def machine() -> dict:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import numba

        threads = numba.get_num_threads()
    except Exception:  # pragma: no cover - numba is a dependency
        threads = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": cpus, "numba_threads": threads, "python": platform.python_version(),
            "numpy": np.__version__}


class _Run:
    """Files of one run directory."""

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

    def write_json(self, path, obj):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)


@contextlib.contextmanager
def _sigint_flag():
    """First Ctrl-C sets flag["stop"] (the loop finishes its step, checkpoints and returns); a second
    Ctrl-C interrupts at once. Outside the main thread the default handler stays."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
    try:
        prev = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, prev)


def train(task, cfg, out, *, task_name: str, resume: bool = False, progress: bool = True,
          extra: dict | None = None) -> dict:
    """Train `task` with `cfg` (a LoopConfig subclass) into directory `out`; returns the summary."""
    from tqdm.auto import tqdm

    cfg.validate()
    run, model = _Run(out), task.model
    opt = optim.AdamW(task.param_groups(), lr=cfg.lr, betas=tuple(cfg.betas))
    data_rng = np.random.default_rng((cfg.seed, 1))  # model init uses (seed); data its own stream
    meta = {"task": task_name, "config": dataclasses.asdict(cfg), **(extra or {})}
    step, wall0, best, bad_evals = 0, 0.0, None, 0
    if resume:
        ck = load_checkpoint(run.checkpoint, model, opt, data_rng)
        for g, s in zip(_rngs(model), ck.config["loop"]["rngs"], strict=True):
            g.bit_generator.state = s
        step, loop = ck.step, ck.config["loop"]
        wall0, best, bad_evals = loop["wall_seconds"], loop["best"], loop["bad_evals"]
        kept = [e for e in run.events() if e["step"] <= step]  # drop events after the checkpoint
        run.metrics.write_text("".join(json.dumps(e) + "\n" for e in kept))
    else:
        for p in (run.metrics, run.summary, run.learning_curve, run.checkpoint):
            p.unlink(missing_ok=True)
    n_params = model.num_parameters()
    run.write_json(run.config, {**meta, "parameters": n_params, "machine": machine()})

    t0 = time.perf_counter()
    wall = lambda: wall0 + time.perf_counter() - t0  # noqa: E731

    def checkpoint():
        loop = {"rngs": [g.bit_generator.state for g in _rngs(model)], "wall_seconds": wall(),
                "best": best, "bad_evals": bad_evals}
        save_checkpoint(run.checkpoint, model, opt, step=step, rng=data_rng, config={**meta, "loop": loop})

    def evaluate():
        model.eval()
        metrics = task.evaluate()
        model.train()
        run.log(step=step, split="eval", **metrics, lr=opt.param_groups[0]["lr"], wall=round(wall(), 3))
        return metrics

    n_micro = cfg.batch_size // min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)  # grads accumulate
    status, last_eval, acc, ev = "completed", None, {}, {}
    bar = tqdm(total=cfg.steps, initial=step, unit="step", disable=not progress, dynamic_ncols=True,
               desc=f"{task_name} {getattr(cfg, 'model', '')}".strip())
    model.train()
    with _sigint_flag() as flag:
        while step < cfg.steps:
            opt.set_lr_factor(optim.warmup_cosine(step, cfg.warmup, cfg.steps, cfg.min_lr_factor))
            opt.zero_grad()
            sums = {}
            for _ in range(n_micro):
                loss, metrics = task.loss(task.batch(data_rng, cfg.batch_size // n_micro))
                (loss * (1.0 / n_micro)).backward() if n_micro > 1 else loss.backward()
                for k, v in {"loss": float(loss.item()), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v / n_micro
            norm = optim.clip_grad_norm(model.parameters(), cfg.clip if cfg.clip > 0 else math.inf)
            if not (math.isfinite(sums["loss"]) and math.isfinite(norm)):
                bar.close()
                run.log(step=step + 1, split="train", event="non-finite", loss=sums["loss"], grad_norm=norm)
                kept = f"last good checkpoint {run.checkpoint} (step {last_eval})" if last_eval is not None \
                    else "no checkpoint was written yet"
                raise NonFiniteLoss(f"non-finite {'loss' if not math.isfinite(sums['loss']) else 'gradient'} "
                                    f"at step {step + 1}; training stopped; {kept}")
            opt.step()
            step += 1
            bar.update(1)
            for k, v in sums.items():
                acc[k] = acc.get(k, 0.0) + v
            acc["n"] = acc.get("n", 0) + 1
            if step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step == cfg.steps or flag["stop"]:
                n = acc.pop("n")
                mean = {k: v / n for k, v in acc.items()}
                run.log(step=step, split="train", **mean, lr=opt.param_groups[0]["lr"], wall=round(wall(), 3))
                shown = {k: f"{v:.3g}" for k, v in mean.items()}
                if last_eval is not None:
                    shown[f"eval_{task.metric}"] = f"{ev[task.metric]:.3g}"
                bar.set_postfix(shown, refresh=False)
                acc = {}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                ev = evaluate()
                last_eval = step
                score = ev[task.metric] if task.higher_is_better else -ev[task.metric]
                if best is None or score > best:
                    best, bad_evals = score, 0
                else:
                    bad_evals += 1
                bar.write(f"step {step}: " + "  ".join(f"held-out {k} {v:.4g}" for k, v in ev.items()))
                checkpoint()
                if cfg.patience and bad_evals >= cfg.patience:
                    status = "early-stopped"
                    break
            if flag["stop"]:
                status = "interrupted"
                break
    bar.close()
    if status == "interrupted":
        if last_eval != step:
            checkpoint()
        run.log(step=step, split="train", event="interrupted", wall=round(wall(), 3))
        return {"status": status, "steps": step, "wall_seconds": wall()}
    final = ev if last_eval == step else evaluate()
    if last_eval != step:
        checkpoint()
    summary = {**meta, "status": status, **final, "steps": step, "wall_seconds": round(wall(), 3),
               "parameters": n_params, "engine": _engine_name(cfg.engine), "machine": machine()}
    run.write_json(run.summary, summary)
    plot_curves(run.events(), run.learning_curve, task.metric, title=f"{task_name} {meta.get('model', '')}")
    return summary


def _engine_name(engine):
    from mincore.backend import resolve_engine

    try:
        return engine or resolve_engine(None, np)
    except Exception:  # pragma: no cover - reporting only
        return str(engine)


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
