"""Options shared by several commands."""

from __future__ import annotations

import click

DEVICE = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where matching and merging run: cpu, cuda, cuda:N, or auto (cuda when available).",
)
DEVICES = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where matching and merging run: cpu, cuda, cuda:N, a list such as cuda:0,cuda:1 (the alignment's "
    "layers spread over them, one layer per device at a time; a device named twice gets two; merges run on "
    "the first), or auto (every visible GPU, else the CPU).",
)
MEMORY = click.option(
    "--max-memory",
    default=None,
    metavar="SIZE",
    help="Memory budget for tensors in flight, e.g. 4GB. Default: half the available memory.",
)
WEIGHTS_MEMORY = click.option(
    "--max-memory",
    default=None,
    metavar="SIZE",
    help="Most memory for the model's weights (float32), e.g. 8GB. A larger model is placed by accelerate: "
    "whole modules in memory up to SIZE, the rest read from its files at each forward pass (slower, never out "
    "of memory). Default: no limit.",
)
SCRATCH = click.option(
    "--scratch",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Existing folder for the temporary models this command writes and deletes again (checked for room "
    "first). Default: the system's temporary folder ($TMPDIR), which may be small or in memory.",
)
DISK = click.option(
    "--disk-budget",
    default=None,
    metavar="SIZE",
    help="Fetch the shards of Hub models into the partial output instead of the shared cache, and delete each "
    "once the merge has passed it, holding at most SIZE of them at once (e.g. 20GB). Default: no budget, "
    "downloads stay in the Hugging Face cache.",
)
PICKLE = click.option(
    "--allow-pickle",
    is_flag=True,
    help="Accept pytorch_model.bin checkpoints, loaded with torch.load(weights_only=True).",
)
REPORT = click.option(
    "--report",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a JSON report (time, bytes, tensors, peak RSS) to this file.",
)
QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
STRICT = click.option(
    "--strict",
    is_flag=True,
    help="Treat warnings about the recipe (an override that selects no tensor) as errors.",
)
PARENTS = click.option(
    "--parents",
    is_flag=True,
    help="Create missing parent folders of OUT (by default only OUT itself is created).",
)


class ModelRef(click.ParamType):
    """A model argument: a local folder or file, or a Hugging Face repo id (``org/name[@revision]``) taken
    from the cache or downloaded into it; converted to the local path."""

    name = "MODEL"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pathlib import Path

        from mergeflow.io.hub import resolve_model

        who = param.human_readable_name if param is not None else "model"
        return resolve_model(str(value), Path.cwd(), who).path


MODEL = ModelRef()
