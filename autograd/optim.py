"""Adam, AdamW, global-norm clipping and learning-rate schedules.

Adam (Kingma & Ba 2015) with bias correction, per parameter p with gradient g at step t:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
Adam's weight_decay is the classic L2 term (g <- g + wd p); AdamW (Loshchilov & Hutter 2019)
decouples it: p <- p - lr * wd * p before the Adam update (PyTorch's order). Parameter groups carry
their own lr / weight_decay, e.g. no decay on norms, biases and recurrent gate parameters.
Schedules return a factor; `Optimizer.set_lr_factor` scales every group's base lr by it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Optimizer", "Adam", "AdamW", "clip_grad_norm", "warmup_cosine", "linear_warmup",
           "param_groups"]


class Optimizer:
    defaults: dict = {}
    state_keys: tuple = ()  # the moment names every state entry holds (checked on load)

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError("optimizer: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for grp in groups:
            g = {**self.defaults, **hyper, **grp, "params": list(grp["params"])}
            g.setdefault("base_lr", g["lr"])
            self.param_groups.append(g)
        self.state: dict[int, dict] = {}  # parameter index (over all groups) -> {"m", "v"}
        self.t = 0

    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        for p in self.params():
            p.grad = None

    def set_lr_factor(self, factor: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * factor

    def step(self):
        self.t += 1
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    self._update(i, p, g)
                i += 1

    def state_dict(self) -> dict:
        """{"t", "groups": hyper-parameters per group, "state": {index: {name: host array}}}."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        state = {i: {k: (a.get() if hasattr(a, "get") else np.array(a)) for k, a in s.items()}
                 for i, s in self.state.items()}
        return {"t": self.t, "groups": groups, "state": state}

    def load_state_dict(self, sd: dict) -> None:
        """Restore a `state_dict()`: everything is checked (keys, step count t, groups and their
        hyper-parameters, parameter indices, moment names, shapes and dtypes) before anything changes."""
        missing = [k for k in ("t", "groups", "state") if k not in sd]
        if missing:
            raise ValueError(f"optimizer state: missing {', '.join(missing)} (expected t, groups and state)")
        t = sd["t"]
        if not isinstance(t, numbers.Integral) or isinstance(t, bool) or not 0 <= t < 2 ** 53:
            raise ValueError(f"optimizer state: t is {t!r}, expected a step count from 0 to 2**53 - 1")
        groups = [self._check_group(i, saved) for i, saved in enumerate(self._list(sd["groups"]))]
        state = {i: self._check_moments(i, s) for i, s in sd["state"].items()}
        for g, saved in zip(self.param_groups, groups, strict=True):
            g.update(saved)
        params = self.params()
        self.state = {int(i): {k: params[int(i)].xp.asarray(a, dtype=params[int(i)].dtype).copy()
                               for k, a in s.items()} for i, s in state.items()}
        self.t = int(t)

    def _list(self, groups) -> list:
        if not isinstance(groups, list | tuple) or len(groups) != len(self.param_groups):
            got = len(groups) if isinstance(groups, list | tuple) else type(groups).__name__
            raise ValueError(f"optimizer state has {got} groups, optimizer has {len(self.param_groups)}")
        return list(groups)

    def _check_group(self, i: int, saved) -> dict:
        """The saved hyper-parameters of group i: known names, numbers where the group has numbers."""
        if not isinstance(saved, dict):
            raise ValueError(f"optimizer state: group {i} is {type(saved).__name__}, expected a dict")
        own = self.param_groups[i]
        unknown = sorted(set(saved) - set(own))
        if unknown:
            raise ValueError(f"optimizer state: group {i} has unknown hyper-parameter(s) {', '.join(unknown)} "
                             f"(known: {', '.join(k for k in own if k != 'params')})")
        out = {}
        for k, v in saved.items():
            if k == "params":
                continue
            mine = own[k]
            if isinstance(mine, list | tuple):
                ok = isinstance(v, list | tuple) and len(v) == len(mine) and all(_is_real(x) for x in v)
                v = type(mine)(v) if ok else v
            else:
                ok = _is_real(v) == _is_real(mine)
            if not ok:
                raise ValueError(f"optimizer state: group {i} {k} is {v!r}, expected a value like {mine!r}")
            out[k] = v
        return out

    def _check_moments(self, i, s) -> dict:
        params = self.params()
        if not isinstance(i, numbers.Integral) and not (isinstance(i, str) and i.isdigit()):
            raise ValueError(f"optimizer state: parameter index {i!r} is not an integer")
        if not 0 <= int(i) < len(params):
            raise ValueError(f"optimizer state: parameter index {i} is out of range; the optimizer has "
                             f"{len(params)} parameters (indices 0 to {len(params) - 1})")
        p = params[int(i)]
        if self.state_keys and set(s) != set(self.state_keys):
            raise ValueError(f"optimizer state: parameter {i} has moments {sorted(s)}, expected "
                             f"{sorted(self.state_keys)}")
        for k, a in s.items():
            if tuple(a.shape) != p.shape:
                raise ValueError(f"optimizer state: {k} of parameter {i} has shape {tuple(a.shape)}, "
                                 f"expected {p.shape}")
            if np.dtype(a.dtype).kind not in "biuf":
                raise ValueError(f"optimizer state: {k} of parameter {i} has dtype {a.dtype}, expected real "
                                 f"numbers")
        return s


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Adam(Optimizer):
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    state_keys = ("m", "v")
    decoupled = False

    def _update(self, i, p, g):
        b1, b2 = g["betas"]
        lr, wd, eps = g["lr"], g["weight_decay"], g["eps"]
        grad = p.grad
        xp = p.xp
        if wd and not self.decoupled:
            grad = grad + wd * p.data
        s = self.state.get(i)
        if s is None:
            s = self.state[i] = {"m": xp.zeros_like(p.data), "v": xp.zeros_like(p.data)}
        m, v = s["m"], s["v"]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * (grad * grad)
        if wd and self.decoupled:
            p.data *= 1 - lr * wd
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        denom = xp.sqrt(v)
        denom *= 1 / math.sqrt(c2)
        denom += eps
        p.data -= (lr / c1) * (m / denom)


class AdamW(Adam):
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    decoupled = True


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)) where norm is their global L2 norm.
    Returns the norm before clipping (as PyTorch's clip_grad_norm_)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) if g.dtype != np.float64
                          else float((g * g).sum()) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(coef)
    return total


def linear_warmup(step: int, warmup: int) -> float:
    """Factor rising linearly from 1/warmup at step 0 to 1 at step warmup-1, then 1."""
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def warmup_cosine(step: int, warmup: int, total: int, min_factor: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then cosine decay from 1 to min_factor at step `total`."""
    if step < warmup:
        return linear_warmup(step, warmup)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(named_params, weight_decay: float, no_decay=(), **group_kw) -> list[dict]:
    """Two AdamW groups: decayed parameters, and those named in `no_decay` or flagged
    Parameter.no_decay (biases, norms, recurrent gate parameters) with weight_decay 0."""
    skip = set(no_decay)
    decay, keep = [], []
    for name, p in named_params:
        (keep if name in skip or getattr(p, "no_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **group_kw},
              {"params": keep, "weight_decay": 0.0, **group_kw}]
    return [g for g in groups if g["params"]]
