"""``mergeflow plan``: what a run would do, from the headers alone."""

from __future__ import annotations

import click

from mergeflow.cli.options import DEVICES, DISK, MEMORY, PICKLE, STRICT
from mergeflow.cli.output import human, parse_size
from mergeflow.cli.stages_cmd import INTERMEDIATE, is_multistage_file, plan_file


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@DEVICES
@MEMORY
@DISK
@PICKLE
@STRICT
@INTERMEDIATE
def plan(
    recipe: str,
    device: str,
    max_memory: str | None,
    disk_budget: str | None,
    allow_pickle: bool,
    strict: bool,
    intermediate_dir: str | None,
) -> None:
    """Print what a run of RECIPE would do: tensors, bytes to read and write, estimated peak memory."""
    from mergeflow.graph import run as runner
    from mergeflow.graph.memory import overlap
    from mergeflow.graph.sources import preflight

    budget = parse_size(disk_budget, "--disk-budget", 1)
    if is_multistage_file(recipe):
        plan_file(
            recipe,
            runner.Options(
                device=device, max_memory=parse_size(max_memory), allow_pickle=allow_pickle, strict=strict
            ),
            intermediate_dir,
        )
        return
    opts = runner.Options(
        device=device,
        max_memory=parse_size(max_memory),
        allow_pickle=allow_pickle,
        strict=strict,
        headers_only=True,
    )
    prep = runner.prepare(recipe, opts)
    download, held = preflight(prep, budget)
    p = prep.plan
    click.echo(f"recipe: {recipe}")
    click.echo("models:")
    for name, r in prep.readers.items():
        click.echo(
            f"  {name}: {r.path} ({r.model_type or 'no config'}, {len(r.tensors)} tensors, "
            f"{human(r.total_bytes)})"
        )
    click.echo(f"operators: {', '.join(f'{k} x{v}' for k, v in p.ops_used.items())}")
    click.echo(f"tensors: {p.n_tensors}")
    click.echo(f"read: {human(p.bytes_read)}   write: {human(p.bytes_written)} in {len(p.layouts)} shard(s)")
    if download:
        click.echo(
            f"download from the Hub: {human(download)} of weights (checked from config and "
            "safetensors headers only; nothing downloaded yet)"
        )
        click.echo(
            f"disk held by downloads: {human(held)} in the Hugging Face cache"
            if budget is None
            else f"disk held by downloads: at most {human(held)} at once (--disk-budget {disk_budget}), "
            "deleted as the merge passes them"
        )
    if p.stats_means:
        means = p.stats_means.values()
        spread = max(means) / min(means) if min(means) > 0 else float("inf")
        click.echo(
            f"statistics: mean {', '.join(f'{m} {v:.3g}' for m, v in p.stats_means.items())} "
            f"({spread:.3g}x apart; fisher's normalize divides each model's by its mean)"
        )
    if prep.recipe.merge_only != "all" or p.left_out:
        arch = p.config_updates.get("architectures")
        click.echo(
            f"merged part: {prep.recipe.merge_only if isinstance(prep.recipe.merge_only, str) else 'patterns'}"
            f"{f' (output: {arch[0]})' if arch else ''}; left out: {', '.join(p.left_out[:6]) or 'nothing'}"
            f"{' ...' if len(p.left_out) > 6 else ''}"
        )
    if prep.recipe.output.task_models:
        others = [m for m in prep.recipe.models if m != prep.recipe.base]
        click.echo(
            f"task models: {', '.join(others)} (OUT.tasks/NAME: the merged part with each one's own head)"
        )
    if p.vmap is not None:
        new = "; ".join(
            f"{m} adds {', '.join(map(repr, toks))}{'...' if len(toks) == 5 else ''}"
            for m, toks in p.vmap.added.items()
        )
        source = prep.recipe.tokenizer.source if prep.recipe.tokenizer is not None else "?"
        click.echo(
            f"tokenizer: {source}, {p.vmap.summary()}; embedding and head rows "
            f"re-indexed by token text{'; ' + new if new else ''}"
        )
    if prep.chat_template is not None:
        click.echo(f"chat template: {prep.recipe.chat_template} ({len(prep.chat_template)} characters)")
    click.echo(f"device: {prep.device}   compute dtype: {prep.recipe.dtype}")
    if p.arch is not None:
        steps = ", ".join(step.name for step in prep.recipe.align)
        aligned = len(prep.readers) - 1
        click.echo(
            f"align: {steps} on {len(p.arch.layers)} layers of {aligned} model(s) to anchor '{p.anchor}' "
            f"({p.arch.family.name}: {p.arch.geometry.h_q} query / {p.arch.geometry.h_kv} key-value heads "
            f"of {p.arch.geometry.d_h}, RoPE {p.arch.geometry.rope})"
        )
    if prep.lanes:
        click.echo(
            f"lanes: layers aligned {len(prep.lanes)} at a time, one on each of {', '.join(map(str, prep.lanes))}"
        )
    if p.whole_model is not None:
        click.echo(f"whole-model step: {p.whole_model[1]}, about {human(p.whole_model[0])}")
    click.echo(f"largest working set: {human(p.peak_task_bytes)} (tensor {p.peak_tensor})")
    share = runner.tensor_budget(prep.max_memory)
    ahead = overlap(prep.max_memory, runner.in_flight(prep), p.arch is not None, device_type=prep.device.type)
    given = f"--max-memory {max_memory}" if max_memory else "default: half the available memory"
    click.echo(
        f"memory budget: {human(prep.max_memory)} ({given}); tensors in flight may use {human(share)} of it, "
        f"the rest is kept for mapped file pages and headroom"
    )
    behind = min(ahead.write_behind, p.bytes_written)
    extra = " and writes queued for the writing thread" if behind else ""
    click.echo(
        f"estimated peak for tensors in flight, read-ahead{extra} included: "
        f"{human(p.peak_task_bytes + min(ahead.prefetch, p.bytes_read) + behind)}"
    )
