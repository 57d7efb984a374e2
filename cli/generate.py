"""`mincore generate`: sample characters from a Shakespeare checkpoint with the recurrent step mode."""

from __future__ import annotations

import click

from .options import SEED, FiniteFloat, engine_option


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
@engine_option("Kernel engine for the prompt pass (default: numba on CPU).")
def generate(path, prompt, tokens, temperature, top_k, seed, engine):
    """Generate text: the prompt is read in one parallel pass, then each character is sampled with
    the model's recurrent step (constant memory per token: the RNN state and the conv's last 3
    inputs). Text is printed as it is produced; the speed goes to stderr at the end.

    \b
    Examples:
      mincore generate --checkpoint runs/shakespeare-mingru/checkpoint.h5
      mincore generate --checkpoint runs/shakespeare-mingru/checkpoint.h5 --prompt "ROMEO:" \\
          --tokens 1000 --temperature 0.8 --top-k 20 --seed 1
    """
    import time

    from mincore.tasks.shakespeare import generate as sample
    from mincore.tasks.shakespeare import load_model

    model, vocab, _ = load_model(path, engine)
    click.echo(prompt, nl=False)
    t0 = time.perf_counter()
    n = 0
    for ch in sample(model, vocab, prompt, tokens, temperature=temperature, top_k=top_k, seed=seed):
        click.echo(ch, nl=False)
        n += 1
    dt = time.perf_counter() - t0
    click.echo("")
    click.echo(f"[{n} characters in {dt:.2f} s (prompt pass of {len(prompt)} included): "
               f"{n / dt if dt > 0 else 0:.0f} tokens/s]", err=True)
