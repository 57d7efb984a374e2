"""Sampling tokens from a SequenceModel: the prompt in one parallel pass, then one step per token,
fused (mincore.inference: the whole token and the draw in one compiled call) or per operation
(model.step). Both paths read the same uniforms from one seeded stream in the same order and use
the same sampling arithmetic, so they differ only where their logits differ (float rounding: the
fused products sum in another order than BLAS's).
"""

from __future__ import annotations

import math

import numpy as np

from mincore.inference import FusedStepper, _host, _launch

__all__ = ["sample_rows", "generate_tokens"]

MAX_CHUNK = 64  # tokens per fused call at most; chunks start at 1 and double, so text appears at once
# Prompts up to this many tokens go through the fused step too: a parallel pass costs a fixed ~20 ms
# (loading its kernels, launching them) plus ~1/4 of a fused step per token, so the two break even at
# a few hundred tokens (benchmarks/generate_speed.py; docs/SHAKESPEARE.md, Generation).
FUSED_PROMPT = 256


def sample_rows(logits, u, temperature: float, top_k: int | None) -> np.ndarray:
    """(B,) draws: row r from softmax(logits[r] / temperature) restricted to its top_k largest, with
    the uniform u[r] (greedy at temperature 0): in float64, shifted by the max, the cumulative sums
    searched for u[r] times their total."""
    out = np.empty(len(logits), np.int64)
    for r, z in enumerate(np.asarray(logits, np.float64)):
        if temperature <= 0:
            out[r] = int(z.argmax())
            continue
        with np.errstate(over="ignore"):  # shifted first: a tiny temperature gives -inf, never inf - inf
            z = (z - z.max()) / temperature
        if top_k and top_k < z.size:
            z = np.where(z < np.partition(z, -top_k)[-top_k], -np.inf, z)
        c = np.cumsum(np.exp(z))
        out[r] = min(np.searchsorted(c, u[r] * c[-1], side="right"), z.size - 1)
    return out


def _check(prompt, tokens, batch, temperature, top_k):
    if len(prompt) < 1:
        raise ValueError("prompt: expected at least one token")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected None or an integer >= 1, got {top_k}")
    if batch < 1 or tokens < 0:
        raise ValueError(f"batch, tokens: expected batch >= 1 and tokens >= 0, got {batch} and {tokens}")


def generate_tokens(model, prompt, tokens: int, *, batch: int = 1, temperature: float = 1.0,
                    top_k: int | None = None, seed: int | None = None, stepper: FusedStepper | None = None):
    """Yield `tokens` arrays of `batch` token ids sampled after `prompt` (a sequence of ids), every
    row from the same prompt. Each token costs one step: the fused one when `stepper`
    (FusedStepper.from_model(model)) is given, else model.step. The prompt goes through one parallel
    forward, or with a stepper and at most FUSED_PROMPT tokens through the fused step.
    The t-th draw of row r uses u[t, r] from np.random.default_rng(seed).random read in order
    (at batch 1 the numbers mincore.tasks.shakespeare.generate draws)."""
    _check(prompt, tokens, batch, temperature, top_k)
    rng = np.random.default_rng(seed)
    xp = model.embed.weight.xp
    ids = np.asarray(prompt, np.int64)
    if stepper is not None and len(ids) <= FUSED_PROMPT:
        S = stepper.state(None, batch)
        for tok in ids:
            last = stepper.step(np.full(batch, tok), S)
        yield from _fused(stepper, S, last, rng, tokens, float(temperature), int(top_k or 0))
        return
    logits, state = model(xp.asarray(np.repeat(ids[None], batch, axis=0)))
    last = _host(logits.data[:, -1])
    if stepper is not None:
        yield from _fused(stepper, stepper.state(state, batch), np.ascontiguousarray(last, stepper.dtype), rng,
                          tokens, float(temperature), int(top_k or 0))
        return
    for _ in range(tokens):
        tok = sample_rows(last, rng.random((1, batch))[0], temperature, top_k)
        yield tok
        logits, state = model.step(xp.asarray(tok), state)
        last = _host(logits.data)


def _fused(stepper, S, last, rng, tokens, temperature, top_k):
    from mincore import inference_jit as J

    run = _launch(len(last), J.generate_serial, J.generate_parallel)
    done, n = 0, 1
    while done < tokens:
        n = min(n, tokens - done)
        out = np.empty((n, len(last)), np.int64)
        run(stepper.P, stepper.L, S, last, rng.random((n, len(last))), temperature, top_k, out)
        yield from out
        done, n = done + n, min(2 * n, MAX_CHUNK)
