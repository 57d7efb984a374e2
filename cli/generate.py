"""`mincore generate`: sample characters from a Shakespeare checkpoint with the recurrent step mode."""

from __future__ import annotations

import click

from .options import SEED, FiniteFloat, engine_option, warn_threads


@click.command()
@click.option("--checkpoint", "path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A checkpoint.h5 written by `mincore train --task shakespeare`.")
@click.option("--prompt", default="\n", show_default="a newline", help="Text to start from.")
@click.option("--tokens", type=click.IntRange(min=0), default=500, show_default=True,
              help="Characters to generate.")
@click.option("--temperature", type=FiniteFloat(min=0), default=0.8, show_default=True,
              help="Softmax temperature (0: always the most likely character).")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the K most likely only.")
@click.option("--seed", type=SEED, default=None, help="Seed of the sampler (same seed, same text).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent samples from the same prompt, generated together as one batch.")
@click.option("--step", "step_mode", type=click.Choice(["fused", "ops"]), default="fused", show_default=True,
              help="fused: every block's step in one compiled call per token; ops: the model's step, one "
                   "array operation at a time (slower; the same distribution).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for BLAS and the numba kernels, at most the CPUs this process may use. One "
                   "sample runs on one thread; more help several --samples and long prompts.")
@engine_option("Kernel engine of the model (default: numba on CPU): the parallel pass of long prompts and the "
               "per-operation step; a GPU engine's model runs with the per-operation step.")
def generate(path, prompt, tokens, temperature, top_k, seed, samples, step_mode, threads, engine):
    """Generate text: each character is sampled after one recurrent step of the model (constant
    memory per token: the RNN state and the conv's last 3 inputs); the prompt is read with the same
    steps, or in one parallel pass when it is longer than 256 characters. One sample is printed as
    it is produced, several at the end; the speed goes to stderr.

    \b
    Examples:
      mincore generate --checkpoint runs/shakespeare-mingru/checkpoint.h5
      mincore generate --checkpoint runs/shakespeare-mingru/checkpoint.h5 --prompt "ROMEO:" \\
          --tokens 1000 --temperature 0.8 --top-k 20 --seed 1
      mincore generate --checkpoint runs/shakespeare-mingru/checkpoint.h5 --samples 8 --threads 2
    """
    import time

    from mincore.backend import cpu_threads
    from mincore.generation import generate_tokens
    from mincore.inference import fused_stepper
    from mincore.tasks.shakespeare import load_model

    warn_threads(threads)
    model, vocab, _ = load_model(path, engine)
    ids = vocab.encode(prompt)
    stepper, why = fused_stepper(model) if step_mode == "fused" else (None, None)
    if why:
        click.echo(f"Warning: the fused step cannot run this model ({why}); using the model's step", err=True)
    with cpu_threads(threads):
        t0 = time.perf_counter()
        rows = [[] for _ in range(samples)]
        if samples == 1:
            click.echo(prompt, nl=False)
        for tok in generate_tokens(model, ids, tokens, batch=samples, temperature=temperature, top_k=top_k,
                                   seed=seed, stepper=stepper):
            for row, t in zip(rows, tok, strict=True):
                row.append(vocab.chars[t])
            if samples == 1:
                click.echo(rows[0][-1], nl=False)
        dt = time.perf_counter() - t0
    if samples > 1:
        click.echo("\n\n".join(f"--- sample {i + 1} of {samples} ---\n{prompt}{''.join(row)}"
                                for i, row in enumerate(rows)), nl=False)
    click.echo("")
    n = tokens * samples
    what = "fused step" if stepper is not None else "per-operation step"
    click.echo(f"[{n} characters{f' ({samples} samples)' if samples > 1 else ''} in {dt:.2f} s (prompt pass of "
               f"{len(prompt)} included, {what}): {n / dt if dt > 0 else 0:.0f} tokens/s]", err=True)
