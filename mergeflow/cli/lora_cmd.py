"""``mergeflow extract-lora``: a PEFT LoRA adapter that turns BASE into TUNED, by truncated SVD."""

from __future__ import annotations

import click

from mergeflow.cli.options import DEVICE, MODEL, PARENTS, QUIET


@click.command("extract-lora")
@click.argument("base", type=MODEL)
@click.argument("tuned", type=MODEL)
@click.option(
    "-o",
    "--out",
    required=True,
    help="Adapter folder to write (adapter_config.json, adapter_model.safetensors).",
)
@click.option(
    "--rank",
    default=16,
    show_default=True,
    type=click.IntRange(1),
    help="Rank of each module's update (the most, with --energy).",
)
@click.option(
    "--energy",
    default=None,
    type=click.FloatRange(0, 1, min_open=True),
    help="Per-module rank: the smallest that keeps this share of the difference's squared norm.",
)
@click.option(
    "--modules",
    default=None,
    metavar="REGEX",
    help="Only 2-D weights whose names match (RE2 syntax, searched). Default: every 2-D weight but "
    "embeddings and the head.",
)
@click.option("--embeddings", is_flag=True, help="Save changed embeddings and head whole (modules_to_save).")
@DEVICE
@click.option("--force", is_flag=True, help="Replace OUT if it is an adapter mergeflow wrote.")
@PARENTS
@QUIET
def extract_lora(
    base: str,
    tuned: str,
    out: str,
    rank: int,
    energy: float | None,
    modules: str | None,
    embeddings: bool,
    device: str,
    force: bool,
    parents: bool,
    quiet: bool,
) -> None:
    """Write a LoRA adapter of BASE whose merge approximates TUNED; print the relative error per module."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from mergeflow.arch.families import family_for
    from mergeflow.errors import InputError
    from mergeflow.graph.run import resolve_device
    from mergeflow.graph.sources import open_model
    from mergeflow.io.lora import CONFIG, WEIGHTS
    from mergeflow.io.lora_extract import config_json, extract
    from mergeflow.io.output_dir import OutputDir, check_output_path
    from mergeflow.io.ownership import write_new

    b, t = open_model("base", base), open_model("tuned", tuned)
    if b.model_type != t.model_type:
        raise InputError(f"{base} is {b.model_type} but {tuned} is {t.model_type}: not one model's fine-tune")
    fam = family_for(b.model_type)
    inputs = [b.path, t.path]
    check_output_path(out, force, inputs, parents)
    bar = tqdm(total=len(t.tensors), desc="extracting", unit="tensor", disable=quiet, dynamic_ncols=True)
    out_dir = OutputDir(out, force, False, inputs, parents)
    with out_dir as tmp:
        ex = extract(
            b,
            t,
            rank,
            resolve_device(device),
            energy,
            modules,
            embeddings,
            transposed=fam is not None and fam.conv1d,
            progress=lambda _n: bar.update(),
        )
        bar.close()
        if not ex.ranks and not ex.saved:
            raise InputError(f"{base} and {tuned} do not differ in any weight a LoRA adapter can carry")
        save_file(ex.tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        write_new(tmp / CONFIG, config_json(ex, b.source, fam is not None and fam.conv1d))
        out_dir.written = [CONFIG, WEIGHTS]
    if quiet:
        return
    worst = sorted(ex.errors.items(), key=lambda kv: -kv[1])
    click.echo(f"{'module':60s} {'rank':>5s} {'rel. error':>10s}")
    for module, err in worst[:10]:
        click.echo(f"{module:60s} {ex.ranks[module]:5d} {err:10.3g}")
    if len(worst) > 10:
        click.echo(f"... and {len(worst) - 10} more modules (smaller errors)")
    overall = (ex.residual_sq / ex.total_sq) ** 0.5 if ex.total_sq else 0.0
    click.echo(
        f"wrote {out_dir.final}: {len(ex.ranks)} LoRA modules (rank up to {max(ex.ranks.values(), default=0)}), "
        f"{len(ex.saved)} saved whole; overall relative error {overall:.3g}"
    )
    if ex.left_out:
        click.echo(
            f"left out {len(ex.left_out)} changed tensor(s) a LoRA cannot carry (e.g. {ex.left_out[0]}); "
            "--embeddings keeps changed embeddings and head",
            err=True,
        )
