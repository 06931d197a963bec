"""``mergeflow stats``: statistics files for data-aware merge operators (fisher, regmean)."""

from __future__ import annotations

import click

from mergeflow.cli.options import DEVICE, MODEL, QUIET, WEIGHTS_MEMORY
from mergeflow.cli.progress import console


@click.command("stats")
@click.argument("model", type=MODEL)
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False),
    help="Text file (one example per line), JSONL with 'text' (and 'label') or with pre-split words "
    "'tokens' (and per-word 'tags'), or .npz with x (and y).",
)
@click.option(
    "--kind",
    required=True,
    type=click.Choice(["fisher", "gram"]),
    help="fisher: diagonal Fisher of every parameter; gram: X^T X of every linear layer's inputs.",
)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Statistics file to write.")
@DEVICE
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option(
    "--max-length",
    default=None,
    type=click.IntRange(2),
    help="Tokens per text. Default: the longest of the first 2000 examples', at most the model's positions.",
)
@click.option("--max-examples", default=None, type=click.IntRange(1), help="Use only the first N examples.")
@click.option(
    "--samples",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="fisher on causal LMs: label sequences sampled from the model per example.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@WEIGHTS_MEMORY
@QUIET
def stats(
    model: str,
    data: str,
    kind: str,
    out: str,
    device: str,
    batch_size: int,
    max_length: int | None,
    max_examples: int | None,
    samples: int,
    seed: int,
    max_memory: str | None,
    quiet: bool,
) -> None:
    """Run MODEL over DATA and write its KIND statistics to OUT (tensors named like its parameters)."""
    from mergeflow.cli.output import parse_size
    from mergeflow.graph.run import resolve_device
    from mergeflow.stats.compute import compute_stats

    res = compute_stats(
        model,
        data,
        kind,
        out,
        resolve_device(device),
        batch_size,
        max_length,
        max_examples,
        samples,
        seed,
        progress=console(quiet),
        max_memory=parse_size(max_memory, least=1 << 20),
    )
    if not quiet and res.get("written", True):  # under a launcher, the first process reports
        click.echo(
            f"wrote {res['path']}: {kind} statistics of {res['tensors']} tensors over {res['examples']} "
            f"examples ({res['task']}, up to {res['max_length']} tokens each"
            + (f"; {res['passes']} passes over the data" if int(str(res.get("passes", 1))) > 1 else "")
            + ")"
        )
