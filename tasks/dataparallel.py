"""What makes an N-rank run the same computation as a 1-rank run (tasks/loop.py uses it under MPI).

Data: every rank draws the whole global batch from the same seeded stream and keeps its rows
(`shard_rows`): rank r of N takes rows r*B/N .. (r+1)*B/N, so the stream, and with it a 1-rank run,
is unchanged, and any rank count that divides the batch sees the same examples.

Dropout: a mask is drawn for the whole batch at once (mincore.autograd.functional.dropout: 2 random
bytes per element from the module's Generator). Under MPI each Dropout module's Generator is wrapped
in a RowShardGenerator, whose `bytes` returns the rank's rows of the draw the 1-rank run makes and
leaves the Generator where that draw leaves it. For NumPy's default PCG64 it jumps there
(`advance`) instead of drawing the other ranks' bytes; any other bit generator draws them all.
So each example's mask is the one it gets on one process, whatever the rank count. The CuPy path
draws its mask on the device from a seed (`integers`), which cannot be cut into rows: there each
rank gets its own seed, masks of the same distribution but not the 1-rank run's.

Both assume batch-major arrays: examples along the first axis of the batch and of every dropout input.
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import distributed

__all__ = ["shard_rows", "check_shards", "RowShardGenerator", "shard_dropout", "generator_of", "share_state",
           "data_parallel", "agree", "check_replicas"]


def share_state(world, model, opt, generators, counters):
    """Rank 0's parameters, optimizer state, Generator states and `counters` on every rank (a fresh
    model's initial parameters, or those of the checkpoint rank 0 resumed); the counters."""
    mine = {"params": model.state_dict(), "optim": opt.state_dict(),
            "generators": [g.bit_generator.state for g in generators], "counters": counters} if world.root else None
    got = world.bcast(mine)
    if not world.root:
        model.load_state_dict(got["params"])
        opt.load_state_dict(got["optim"])
        for g, s in zip(generators, got["generators"], strict=True):
            g.bit_generator.state = s
    return got["counters"]


def data_parallel(world, model, params, xp):
    """Shard the model's dropout masks over the ranks; the all-reduce that averages `params`' gradients."""
    from mincore.autograd.allreduce import GradientAllReduce

    try:
        reduce = GradientAllReduce(world, params, xp)
    except (ValueError, TypeError) as e:  # the same choice, refused on every rank alike
        raise distributed.every_rank(e) from None
    shard_dropout(model, world.rank, world.size)
    return reduce


def agree(world, sums: dict, flag: dict, signals) -> dict:
    """The training metrics' means over the ranks; flag["stop"] set on every rank to a signal (one of
    `signals`, names) that any rank had received (flag["received"]) when it reached this sum, so that
    all ranks stop after the same step. A signal that lands after the sum counts at the next step's:
    deciding on the local flag instead would let one rank stop a step before the others, which then
    wait in the next all-reduce for a rank that has left the loop."""
    total = world.sum([*sums.values(), *(flag["received"] == n for n in signals)], "sum of the step's metrics")
    flag["stop"] = next((n for n, c in zip(signals, total[len(sums):], strict=True) if c), None)
    return {k: v / world.size for k, v in zip(sums, total, strict=False)}


def check_replicas(world, model, xp, step: int, kept: str) -> None:
    """The ranks' parameters must be equal (each applies the same averaged update): a difference stops
    the run on every rank before rank 0 saves a checkpoint the others do not hold."""
    d = float(sum(xp.sum(p.data, dtype=xp.float64) for p in model.parameters()))
    hi, neg_lo = world.max([d, -d], "comparison of the ranks' parameters")
    if hi != -neg_lo:
        raise distributed.every_rank(RuntimeError(
            f"the ranks' parameters differ at step {step} (sums from {-neg_lo!r} to {hi!r}): the ranks do not "
            f"compute alike (mixed machines or libraries?); training stopped; {kept}"))


def check_shards(cfg, size: int) -> None:
    """A ValueError (raised alike on every rank) unless each micro-batch of cfg splits into `size`
    equal shards."""
    micro = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    if micro % size:
        what = (f"batch_size {cfg.batch_size}" if micro == cfg.batch_size else
                f"micro-batches of {micro} (batch_size {cfg.batch_size}, micro_batch {cfg.micro_batch})")
        raise distributed.every_rank(ValueError(
            f"{what} cannot be split evenly over {size} ranks: choose a batch size whose micro-batches are a "
            f"multiple of {size}, or another number of ranks"))


def shard_rows(batch, rank: int, size: int):
    """Rows rank*n/size .. (rank+1)*n/size of every array of `batch` (an array or a dict / tuple /
    list of them, each with the n examples along its first axis)."""
    if isinstance(batch, dict):
        return {k: shard_rows(v, rank, size) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_rows(v, rank, size) for v in batch)
    n = batch.shape[0] if getattr(batch, "ndim", 0) else None
    if n is None or n % size:
        raise ValueError(f"a batch entry of shape {getattr(batch, 'shape', ())} cannot be split into {size} shards "
                         f"of examples (expected the examples along its first axis, a multiple of {size})")
    m = n // size
    return batch[rank * m:(rank + 1) * m]


class RowShardGenerator:
    """A Dropout module's Generator as rank `rank` of `size` sees it (the module docstring)."""

    def __init__(self, generator: np.random.Generator, rank: int, size: int):
        self.generator, self.rank, self.size = generator, rank, size

    def bytes(self, length: int) -> bytes:
        """This rank's `length` bytes of the global draw of size * length bytes."""
        a = self.rank * length
        return _draw_slice(self.generator, self.size * length, a, a + length)

    def integers(self, high, *args, **kw):
        """A draw from the shared stream (which advances as on one process) made this rank's own."""
        v = int(self.generator.integers(high, *args, **kw))
        return int(np.random.SeedSequence([v, self.rank]).generate_state(1, np.uint64)[0]) % int(high)


def _draw_slice(gen: np.random.Generator, total: int, a: int, b: int) -> bytes:
    """bytes [a, b) of gen.bytes(total), leaving `gen` as gen.bytes(total) leaves it."""
    bg = gen.bit_generator
    if type(bg) is not np.random.PCG64:
        return gen.bytes(total)[a:b]
    # Generator.bytes(total) takes ceil(total / 4) 32-bit words from PCG64: a word it holds back
    # (has_uint32) first, then the low and high halves of each 64-bit output, little-endian. So the
    # bytes are [held word] + outputs 0, 1, ... as little-endian uint64s (tests check it against bytes).
    state = bg.state
    held = 4 if state["has_uint32"] else 0
    words = -(-total // 4) or 1  # numpy takes one word even for 0 bytes
    rest = words - held // 4  # words taken from new outputs
    n_out = -(-rest // 2)
    lo, hi = max(a - held, 0) // 8, max(-(-(b - held) // 8), 0)
    raw = _outputs(state, lo, hi - lo)
    stream = (int(state["uinteger"]).to_bytes(4, "little") if held and a < held else b"") + raw.astype("<u8").tobytes()
    start = a if a < held else a - held - 8 * lo
    piece = stream[start:start + (b - a)]
    after = dict(state, state=_outputs_state(state, n_out), has_uint32=rest % 2)
    if n_out:  # PCG64 keeps the high half of its last output (held back when rest is odd)
        last = raw[n_out - 1 - lo] if lo <= n_out - 1 < hi else _outputs(state, n_out - 1, 1)[0]
        after["uinteger"] = int(last) >> 32
    bg.state = after
    return piece


def _outputs(state: dict, start: int, count: int) -> np.ndarray:
    """Raw 64-bit outputs start .. start + count - 1 of a PCG64 in `state` (the held word ignored)."""
    bg = np.random.PCG64()
    bg.state = dict(state, has_uint32=0, uinteger=0)
    bg.advance(start)
    return bg.random_raw(count) if count > 0 else np.empty(0, np.uint64)


def _outputs_state(state: dict, n: int) -> dict:
    bg = np.random.PCG64()
    bg.state = dict(state, has_uint32=0, uinteger=0)
    bg.advance(n)
    return bg.state["state"]


def generator_of(rng):
    """The Generator itself, where `rng` is a RowShardGenerator around it."""
    return rng.generator if isinstance(rng, RowShardGenerator) else rng


def shard_dropout(model, rank: int, size: int) -> None:
    """Wrap the Generator of every module that draws masks (dropout) in a RowShardGenerator."""
    for m in model.modules():
        g = getattr(m, "rng", None)
        if isinstance(g, np.random.Generator):
            m.rng = RowShardGenerator(g, rank, size)
