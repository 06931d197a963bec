"""``mergeflow moe``: a mixture of experts from dense models."""

from __future__ import annotations

import click

from mergeflow.cli.options import DEVICE, MEMORY, PARENTS, PICKLE, QUIET
from mergeflow.cli.output import human, parse_size
from mergeflow.cli.progress import console


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("out")
@DEVICE
@MEMORY
@PICKLE
@click.option("--force", is_flag=True, help="Replace OUT if it is an output mergeflow wrote.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into OUT.")
@PARENTS
@QUIET
def moe(
    config: str,
    out: str,
    device: str,
    max_memory: str | None,
    allow_pickle: bool,
    force: bool,
    resume: bool,
    parents: bool,
    quiet: bool,
) -> None:
    """Assemble a mixture of experts from CONFIG (mergekit-moe's format) into OUT: attention, norms and
    embeddings from base_model, each expert model's MLPs as one expert of every layer, router rows from the
    experts' prompts (gate_mode hidden, hidden_avg, cheap_embed) or random."""
    from mergeflow.graph import run as runner
    from mergeflow.moe.build import prepare_moe

    opts = runner.Options(
        tune_malloc=True,
        device=device,
        max_memory=parse_size(max_memory),
        allow_pickle=allow_pickle,
        force=force,
        resume=resume,
        parents=parents,
        label="assembling experts",
    )
    prep = prepare_moe(config, opts)
    result = runner.run(prep, out, opts, progress=console(quiet))
    if not quiet:
        p = result.plan
        cfg = p.config_json or {}
        n = cfg.get("num_local_experts") or cfg.get("num_experts")
        click.echo(
            f"wrote {result.out}: {cfg.get('architectures', ['?'])[0]} with {n} experts "
            f"({cfg.get('num_experts_per_tok')} per token), {p.n_tensors} tensors, {human(p.bytes_written)} "
            f"in {result.seconds:.2f} s; peak RSS {human(runner.peak_rss_bytes())}"
        )
