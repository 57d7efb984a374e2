"""The one training loop every task shares (copy, shakespeare, rl): read `train` top to bottom.

A task (the contract in mincore.tasks) is trained on the arrays its engine takes: `place` moves the
model there and sets task.xp (numpy or cupy, from the engine table), so a task builds everything on
the host and moves batches with task.xp (`to_device` for a dict of arrays). Files written to `out`
are those of tasks/rundir.py; the folder is locked while a run trains in it. Resuming restores
parameters, AdamW moments, the step, the data Generator and every dropout Generator, so on the CPU a
resumed run is bit-identical to an uninterrupted one.

What is written is checked first: a step whose loss, gradients or updated parameters are not finite,
or an evaluation with a non-finite figure, stops the run (NonFiniteLoss) before any checkpoint, so the
checkpoint on disk is always the last good one. Ctrl-C (SIGINT) and SIGTERM finish the step, checkpoint
and return status "interrupted".

Under MPI (launched by mpiexec / srun with N > 1 ranks: mincore.autograd.distributed) the loop is
data-parallel: batch_size stays the global batch, each rank trains on its rows of it and of every
dropout mask (tasks/dataparallel.py), gradients are averaged over the ranks after backward, and
metrics, stops and evaluations are agreed, so an N-rank run is the 1-rank run up to the order of
floating sums. Rank 0 alone locks the folder and writes its files (rank 0 loads a checkpoint and
broadcasts it), shows the progress bar and prints. docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable

import numpy as np

from mincore.autograd import distributed, load_checkpoint, optim, save_checkpoint
from mincore.backend import engine_array_module, get_array_module, resolve_engine

from . import dataparallel
from .config import LoopConfig, config_from_dict, describe, preset_config, task_functions
from .rundir import FILES, PeerRunDir, RunDir, RunFolderBusy, machine, plot_curves

__all__ = ["LoopConfig", "NonFiniteLoss", "RunFolderBusy", "train", "FILES", "place", "to_device", "to_host",
           "describe", "task_functions", "preset_config", "config_from_dict"]


class NonFiniteLoss(RuntimeError):
    """Raised after a clean stop on a NaN/inf loss, gradient, parameter or held-out figure; the
    checkpoint on disk (named in the message) is the last good one."""

    on_every_rank = True  # the figures are agreed over the ranks first (mincore.autograd.distributed)


# ------------------------------------------------------------------------------ where arrays live
def place(model, engine: str | None):
    """Move `model` to the arrays `engine` takes (mincore.backend.engine_array_module); that module.
    The one place a model goes to its device: training, evaluation and generation all call it."""
    xp = engine_array_module(engine)
    model.to(xp)
    return xp


def to_device(batch, xp):
    """An array, or a dict / tuple / list of them, as arrays of module `xp`."""
    if isinstance(batch, dict):
        return {k: to_device(v, xp) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, xp) for v in batch)
    return xp.asarray(batch)


def to_host(a) -> np.ndarray:
    """A NumPy array of `a` (CuPy arrays are copied off the device)."""
    return a.get() if get_array_module(a) is not np else np.asarray(a)


# ------------------------------------------------------------------------------ the loop
def train(task, cfg, out, *, task_name: str, resume: bool = False, force: bool = False, progress: bool = True,
          extra: dict | None = None, report: Callable[[dict], dict] | None = None) -> dict:
    """Train `task` with `cfg` (a LoopConfig subclass) into directory `out`; returns the summary.
    A folder holding a run is refused (FileExistsError) unless `resume` continues it or `force`
    replaces it; one in use by another process is refused at once (RunFolderBusy).
    `extra`: more keys for config.json, checkpoints and summary.json (task.meta() gives the task's
    own); `report(summary)`: more keys for summary.json, computed after training (rl: scores)."""
    cfg.validate()
    world = distributed.world()
    if world.size > 1:
        dataparallel.check_shards(cfg, world.size)
    files = RunDir(out) if world.root else PeerRunDir(out)  # rank 0 alone touches the folder

    def claim():
        held.enter_context(files.locked())
        files.prepare(resume, force)
    with contextlib.ExitStack() as held:
        world.on_root(claim)
        if world.size > 1:  # one GPU per rank, chosen before the model goes there
            world.use_device(engine_array_module(cfg.engine))
        task.xp = place(task.model, cfg.engine)
        run = _Training(task, cfg, files, _meta(task, cfg, task_name, extra, world), world)
        if resume:
            world.on_root(run.resume)
        run.share()
        run.start()
        try:
            status = run.steps(progress)
            if status == "interrupted":
                return run.interrupted()
            return run.finish(status, report)
        except distributed.RankTimeout as e:
            raise distributed.RankTimeout(f"{e}; {run.kept()}") from None


def _meta(task, cfg, task_name, extra, world) -> dict:
    model = {"model": cfg.model} if hasattr(cfg, "model") else {}
    own = task.meta() if hasattr(task, "meta") else {}
    ranks = {"ranks": world.size} if world.size > 1 else {}
    return {"task": task_name, "config": dataclasses.asdict(cfg), **model, **own, **(extra or {}), **ranks}


class _Training:
    """One run: the optimizer, the data Generator and what a checkpoint keeps besides them."""

    def __init__(self, task, cfg, files, meta, world):
        self.task, self.cfg, self.meta, self.model, self.files = task, cfg, meta, task.model, files
        self.world, self.allreduce, self.flag = world, None, {"stop": None, "received": None}
        self.opt = optim.AdamW(task.param_groups(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.data_rng = np.random.default_rng((cfg.seed, 1))  # model init uses (seed); data its own stream
        self.step, self.wall0, self.best, self.bad_evals = 0, 0.0, None, 0
        self.last_eval, self.ev = None, {}  # the step of the latest evaluation, and its metrics
        self.saved = None  # the step of the checkpoint on disk (None: none of this run)
        self.signal = None  # the name of the signal that stopped the run
        # gradients accumulate over micro-batches of batch_size / n_micro sequences
        self.n_micro = cfg.batch_size // min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)

    def resume(self):
        """Continue from the run's checkpoint; events after it are dropped (the steps run again)."""
        ck = load_checkpoint(self.files.checkpoint, self.model, self.opt, self.data_rng, max_step=self.cfg.steps)
        loop = ck.config["loop"]
        rngs = _rngs(self.model)
        if len(loop["rngs"]) != len(rngs):
            raise ValueError(f"{self.files.checkpoint}: the training-loop state holds {len(loop['rngs'])} random "
                             f"states, the model has {len(rngs)} random modules (dropout); expected one each "
                             "(was the model changed since this checkpoint?)")
        for g, s in zip(rngs, loop["rngs"], strict=True):
            g.bit_generator.state = s
        self.step, self.wall0, self.saved = ck.step, loop["wall_seconds"], ck.step
        self.best, self.bad_evals = loop["best"], loop["bad_evals"]
        self.files.keep_events_until(self.step)

    def share(self):
        """MPI: every rank takes rank 0's state (dataparallel.share_state), then its shard of the
        dropout masks; gradients are averaged over the ranks from here on."""
        w = self.world
        if w.size > 1:
            counters = (self.step, self.wall0, self.best, self.bad_evals, self.saved)
            counters = dataparallel.share_state(w, self.model, self.opt, [self.data_rng, *_rngs(self.model)], counters)
            self.step, self.wall0, self.best, self.bad_evals, self.saved = counters
            self.allreduce = dataparallel.data_parallel(w, self.model, self.opt.params(), self.task.xp)
            self.meta["allreduce"] = self.allreduce.how

    def start(self):
        self.files.write_json(self.files.config, {**self.meta, "parameters": self.model.num_parameters(),
                                                  "machine": machine()})
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.t0

    def steps(self, progress) -> str:
        """Optimizer steps until cfg.steps, Ctrl-C / SIGTERM or early stopping; the run's status."""
        from tqdm.auto import tqdm

        cfg, status, acc = self.cfg, "completed", {}
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", disable=not (progress and self.world.root),
                   dynamic_ncols=True, desc=f"{self.meta['task']} {getattr(cfg, 'model', '')}".strip())
        self.model.train()
        try:
            with _stop_flag() as flag:
                self.flag = flag
                while self.step < cfg.steps:
                    self.schedule()
                    acc = _add(acc, self.optimizer_step())
                    bar.update(1)
                    last = self.step == cfg.steps
                    if self.step % cfg.log_every == 0 or self.step % cfg.eval_every == 0 or last or flag["stop"]:
                        self.log_train(acc, bar)
                        acc = {}
                    if (self.step % cfg.eval_every == 0 or last) and self.evaluate_and_checkpoint(bar):
                        status = "early-stopped"
                        break
                    if flag["stop"]:
                        status, self.signal = "interrupted", flag["stop"]
                        break
        finally:
            bar.close()
        return status

    def schedule(self):
        """Linear warmup, then cosine decay to min_lr_factor (optim.warmup_cosine)."""
        c = self.cfg
        self.opt.set_lr_factor(optim.warmup_cosine(self.step, c.warmup, c.steps, c.min_lr_factor))

    def optimizer_step(self) -> dict:
        """One AdamW step on batch_size sequences (as n_micro micro-batches): the mean training metrics."""
        task, n, w = self.task, self.n_micro, self.world
        self.opt.zero_grad()
        sums = {}
        for _ in range(n):
            batch = task.batch(self.data_rng, self.cfg.batch_size // n)  # the global (micro-)batch
            loss, metrics = task.loss(batch if w.size == 1 else dataparallel.shard_rows(batch, w.rank, w.size))
            (loss * (1.0 / n)).backward() if n > 1 else loss.backward()
            for k, v in {"loss": float(loss.item()), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v / n
        if w.size > 1:  # the time spent in the gradient all-reduce (waiting for the slowest rank included)
            t0 = time.perf_counter()
            self.allreduce()
            sums["allreduce_seconds"] = time.perf_counter() - t0
            sums = dataparallel.agree(w, sums, self.flag, [s.name for s in _STOP_SIGNALS])
        else:
            self.flag["stop"] = self.flag["received"]
        norm = optim.clip_grad_norm(self.model.parameters(), self.cfg.clip if self.cfg.clip > 0 else math.inf)
        stats = {"split": "train", "loss": sums["loss"], "grad_norm": norm}
        if not math.isfinite(sums["loss"]):
            self.stop_non_finite(self.step + 1, "loss", stats)
        if not math.isfinite(norm):
            self.stop_non_finite(self.step + 1, "gradient", stats, f" (norm {norm})")
        self.opt.step()
        self.step += 1
        bad = _non_finite_parameters(self.model, self.task.xp)
        if bad:
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            self.stop_non_finite(self.step, "parameters", stats, f" after the optimizer step ({names})")
        return sums

    def kept(self) -> str:
        return (f"last good checkpoint: {self.files.checkpoint} (step {self.saved})" if self.saved is not None
                else "no checkpoint was written")

    def stop_non_finite(self, step, what, event, detail=""):
        """Log the event and stop; nothing else is written, so the checkpoint on disk stays the last good one."""
        self.files.log(step=step, **event, event="non-finite")
        raise NonFiniteLoss(f"non-finite {what} at step {step}{detail}; training stopped; {self.kept()}")

    def log_train(self, acc, bar):
        """The mean training metrics since the last log line, to metrics.jsonl and the progress bar."""
        n = acc.pop("n")
        mean = {k: v / n for k, v in acc.items()}
        self.files.log(step=self.step, split="train", **mean, lr=self.opt.param_groups[0]["lr"],
                       wall=round(self.wall(), 3))
        shown = {k: f"{v:.3g}" for k, v in mean.items() if not k.endswith("_seconds")}
        if self.last_eval is not None:
            shown[f"eval_{self.task.metric}"] = f"{self.ev[self.task.metric]:.3g}"
        bar.set_postfix(shown, refresh=False)

    def evaluate(self) -> dict:
        """The task's held-out metrics (model in eval mode), logged; a non-finite one stops the run."""
        self.model.eval()
        metrics = self.world.bcast(self.task.evaluate())  # rank 0's figures (tasks may shard and sum them)
        self.model.train()
        event = {"split": "eval", **metrics, "lr": self.opt.param_groups[0]["lr"], "wall": round(self.wall(), 3)}
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            self.stop_non_finite(self.step, f"held-out {', '.join(bad)}", event)
        self.files.log(step=self.step, **event)
        return metrics

    def evaluate_and_checkpoint(self, bar) -> bool:
        """Evaluate, track the best score, checkpoint; True when patience says stop."""
        self.ev, self.last_eval = self.evaluate(), self.step
        score = self.ev[self.task.metric] if self.task.higher_is_better else -self.ev[self.task.metric]
        if self.best is None or score > self.best:
            self.best, self.bad_evals = score, 0
        else:
            self.bad_evals += 1
        if self.world.root:
            bar.write(f"step {self.step}: " + "  ".join(f"held-out {k} {v:.4g}" for k, v in self.ev.items()))
        self.checkpoint()
        return bool(self.cfg.patience and self.bad_evals >= self.cfg.patience)

    def checkpoint(self):
        if self.world.size > 1:
            dataparallel.check_replicas(self.world, self.model, self.task.xp, self.step, self.kept())
        loop = {"rngs": [g.bit_generator.state for g in _rngs(self.model)], "wall_seconds": self.wall(),
                "best": self.best, "bad_evals": self.bad_evals}
        if self.world.root:
            save_checkpoint(self.files.checkpoint, self.model, self.opt, step=self.step, rng=self.data_rng,
                            config={**self.meta, "loop": loop})
        self.saved = self.step

    def interrupted(self) -> dict:
        """Ctrl-C or SIGTERM: a checkpoint of this step (unless one was just written), no summary."""
        if self.saved != self.step:
            self.checkpoint()
        self.files.log(step=self.step, split="train", event="interrupted", signal=self.signal,
                       wall=round(self.wall(), 3))
        return {"status": "interrupted", "signal": self.signal, "steps": self.step, "wall_seconds": self.wall()}

    def finish(self, status, report) -> dict:
        """Final held-out metrics (the last evaluation when it was this step), summary.json, the plot."""
        final = self.ev if self.last_eval == self.step else self.evaluate()
        if self.saved != self.step:
            self.checkpoint()
        summary = {**self.meta, "status": status, **final, "steps": self.step,
                   "wall_seconds": round(self.wall(), 3), "parameters": self.model.num_parameters(),
                   "engine": _engine_name(self.cfg.engine), "machine": machine()}
        if report is not None:
            summary.update(self.world.on_root(lambda: report(summary)))
        self.files.write_json(self.files.summary, summary)
        if self.world.root:
            plot_curves(self.files.events(), self.files.learning_curve, self.task.metric,
                        title=f"{self.meta['task']} {self.meta.get('model', '')}")
        return summary


def _add(acc: dict, sums: dict) -> dict:
    """Training metrics summed over the steps since the last log line; "n" counts the steps."""
    for k, v in sums.items():
        acc[k] = acc.get(k, 0.0) + v
    acc["n"] = acc.get("n", 0) + 1
    return acc


def _rngs(model):
    """The Generators of every module that draws random numbers (dropout), in module order."""
    gens = (dataparallel.generator_of(getattr(m, "rng", None)) for m in model.modules())
    return [g for g in gens if isinstance(g, np.random.Generator)]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and what `kill`, schedulers and containers send


@contextlib.contextmanager
def _stop_flag():
    """The first SIGINT or SIGTERM sets flag["received"] to its name; the step turns it into
    flag["stop"] at one agreed point (every rank's, under MPI), then the loop finishes that step,
    checkpoints and returns. A second signal interrupts at once. Outside the main thread the default
    handlers stay."""
    flag = {"stop": None, "received": None}

    def handler(signum, frame):
        if flag["received"]:
            raise KeyboardInterrupt
        flag["received"] = signal.Signals(signum).name
    prev = {}
    with contextlib.suppress(ValueError):  # not the main thread: the first signal.signal refuses
        for sig in _STOP_SIGNALS:
            prev[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in prev.items():
            signal.signal(sig, h)


def _non_finite_parameters(model, xp) -> list[str]:
    """Names of the parameters holding an inf or NaN; [] when all are finite. One float64 sum per
    parameter, added on the device and read once: a float32 sum cannot overflow float64, and inf or
    NaN carries through, so the total is finite exactly when every entry is. Names only on failure."""
    params = model.parameters()
    total = sum(xp.sum(p.data, dtype=xp.float64) for p in params)
    if math.isfinite(float(total)):
        return []
    return [n for n, p in model.named_parameters() if not bool(xp.isfinite(p.data).all())]


def _engine_name(engine):
    try:
        return engine or resolve_engine(None, np)
    except Exception:  # pragma: no cover - reporting only
        return str(engine)
