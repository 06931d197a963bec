"""``mergeflow learn-aligner``: train a Deep-Align aligner on a zoo of MLP checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from mergeflow.cli.options import PARENTS, QUIET
from mergeflow.cli.progress import console


@click.command("learn-aligner")
@click.argument("zoo", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out", required=True, help="The aligner folder to write.")
@click.option("--family", type=click.Choice(["mlp"]), default="mlp", show_default=True, help="Model family.")
@click.option("--data", type=click.Path(dir_okay=False), required=True, help=".npz (x, y) for the LMC loss.")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True, help="Training steps.")
@click.option("--batch", type=click.IntRange(2), default=8, show_default=True, help="Pairs per step.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--channels", type=click.IntRange(1), default=32, show_default=True, help="Encoder width.")
@click.option("--depth", type=click.IntRange(1), default=4, show_default=True, help="DWS layers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--save-every", type=click.IntRange(1), default=100, show_default=True, help="Checkpoint period."
)
@click.option(
    "--held-out", type=click.IntRange(0), default=0, show_default=True, help="Last N zoo models kept out."
)
@click.option("--force", is_flag=True, help="Replace OUT if it is an aligner mergeflow wrote.")
@click.option("--resume", is_flag=True, help="Continue an interrupted training into OUT.")
@PARENTS
@QUIET
def learn_aligner(
    zoo: str,
    out: str,
    family: str,
    data: str,
    steps: int,
    batch: int,
    lr: float,
    channels: int,
    depth: int,
    seed: int,
    save_every: int,
    held_out: int,
    force: bool,
    resume: bool,
    parents: bool,
    quiet: bool,
) -> None:
    """Train an aligner on the MLP checkpoints in ZOO (each a folder with config.json and safetensors, all of
    one shape) and write it to OUT; a recipe uses it as ``permute: {method: learned, aligner: OUT}``.

    Interrupted (Ctrl-C, SIGTERM, a kill), the training keeps its last checkpoint: the same command with
    --resume continues from it, to the same result as an uninterrupted run."""
    import torch

    from mergeflow.deepalign.aligner import save_aligner
    from mergeflow.deepalign.mlp import load_mlp, mlp_inputs
    from mergeflow.deepalign.train import Settings, train
    from mergeflow.errors import InputError
    from mergeflow.io.output_dir import OutputDir, check_output_path
    from mergeflow.stats.data import check_labels, load_data

    folders = (
        sorted(p for p in Path(zoo).iterdir() if (p / "config.json").is_file()) if Path(zoo).is_dir() else []
    )
    if not Path(zoo).is_dir():
        raise InputError(f"zoo {zoo} is not a folder")
    if held_out:
        folders = folders[:-held_out]
    if len(folders) < 2:
        raise InputError(f"zoo {zoo}: {len(folders)} model folder(s) to train on; at least two are needed")
    models = [load_mlp(f) for f in folders]
    spec = models[0][0]
    for f, (s, _w) in zip(folders, models, strict=True):
        if s.sizes != spec.sizes:
            raise InputError(
                f"{f}: layer sizes {list(s.sizes)} differ from {folders[0].name}'s {list(spec.sizes)}"
            )
    d = load_data(data)
    if d.labels is None:
        raise InputError(f"{data}: the LMC loss needs labels ('y' of a .npz)")
    check_labels(d, spec.sizes[-1])
    x = mlp_inputs(d.x, spec, data)
    settings = Settings(
        steps=steps, batch=batch, lr=lr, channels=channels, depth=depth, seed=seed, save_every=save_every
    )
    check_output_path(out, force, [Path(zoo)], parents)
    out_dir = OutputDir(out, force, resume, [Path(zoo)], parents)
    with out_dir as tmp:
        try:
            encoder, log = train(
                [w for _s, w in models],
                (x, torch.from_numpy(d.labels)),
                settings,
                tmp,
                spec.activation,
                console(quiet),
            )
        except ValueError as exc:  # a checkpoint of other settings
            raise InputError(str(exc)) from None
        last = log[-1]
        out_dir.written = save_aligner(
            tmp,
            encoder,
            {
                "settings": settings.as_dict(),
                "zoo": [f.name for f in folders],
                "final_losses": {k: v for k, v in last.items() if k != "step"},
            },
        )
    if not quiet:
        click.echo(
            f"wrote {out}: aligner for {list(spec.sizes)} trained {steps} steps on {len(folders)} models "
            f"(final supervised {last['supervised']:.3f}, reconstruction {last['reconstruction']:.3f}, "
            f"lmc {last['lmc']:.3f})"
        )
