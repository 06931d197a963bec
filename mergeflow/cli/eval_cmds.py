"""``mergeflow eval barrier``, ``mergeflow eval equivalence`` and ``mergeflow eval tasks``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mergeflow.cli.convert_eval import eval_group
from mergeflow.cli.options import DEVICE, MODEL, QUIET, SCRATCH, WEIGHTS_MEMORY
from mergeflow.cli.output import parse_size


def _steps(spec: str | None, anchor: str) -> list | None:
    if spec is None:
        return None
    from mergeflow.graph.align_recipe import default_steps, read_steps

    if spec == "default":
        return default_steps(anchor)
    root = Path(spec).resolve().parent  # a data file named relative to the steps file stays found
    steps = []
    for step in read_steps(spec, recipe_ok=True)[1]:
        if isinstance(step, dict) and len(step) == 1:
            ((name, params),) = step.items()
            data = params.get("data") if isinstance(params, dict) else None
            if isinstance(data, str) and not Path(data).is_absolute():
                step = {name: {**params, "data": str(root / data)}}
        steps.append(step)
    return steps


def _main(device: str) -> bool:
    """Whether this is the first (or only) process of a launch."""
    from mergeflow.graph.run import resolve_device
    from mergeflow.stats.parallel import process_group

    return process_group(resolve_device(device)).main


@eval_group.command()
@click.argument("model_a", type=MODEL)
@click.argument("model_b", type=MODEL)
@click.option(
    "--data", required=True, type=click.Path(dir_okay=False), help="Held-out set (text, JSONL or .npz)."
)
@click.option(
    "--align",
    "align_spec",
    default=None,
    metavar="STEPS|default",
    help="A steps file or recipe whose 'align:' steps are added one at a time (a curve each), or "
    "'default' (permute heads and FFN, rotate, rescale).",
)
@click.option(
    "--points", default=11, show_default=True, type=click.IntRange(3), help="Grid of lambda in [0, 1]."
)
@click.option("--max-examples", default=None, type=click.IntRange(1))
@click.option(
    "-o",
    "--out",
    default="barrier",
    show_default=True,
    help="Write OUT.json (every point) and OUT.png (the curves).",
)
@DEVICE
@WEIGHTS_MEMORY
@SCRATCH
@QUIET
def barrier(
    model_a: str,
    model_b: str,
    data: str,
    align_spec: str | None,
    points: int,
    max_examples: int | None,
    out: str,
    device: str,
    max_memory: str | None,
    scratch: str | None,
    quiet: bool,
) -> None:
    """Loss of (1-l) A + l B over a grid of l, naive and after each alignment step; the barrier of each."""
    from mergeflow import api
    from mergeflow.cli.progress import console
    from mergeflow.eval.barrier_plot import plot
    from mergeflow.io.ownership import atomic_write, check_file_target

    inputs = [Path(model_a), Path(model_b), Path(data)]
    if align_spec not in (None, "default"):
        inputs.append(Path(align_spec))
    json_out, png_out = (
        check_file_target(f"{out}.{ext}", inputs, "eval barrier -o") for ext in ("json", "png")
    )
    report = api.barrier(
        model_a,
        model_b,
        data,
        _steps(align_spec, model_a),
        points,
        device,
        max_examples,
        console(quiet),
        parse_size(max_memory, least=1 << 20),
        scratch,
    )
    if not _main(device):  # several processes: the first writes and reports
        return
    text = json.dumps({"written_by": "mergeflow", **report}, indent=2) + "\n"
    atomic_write(json_out, lambda tmp: tmp.write_text(text))
    atomic_write(png_out, lambda tmp: plot(report, tmp))
    if quiet:
        return
    click.echo(
        f"{'variant':10s} {'barrier':>9s} {'loss(0)':>9s} {'loss(1)':>9s} {'loss(.5)':>9s} {'acc(.5)':>8s}"
    )
    for name, v in report["variants"].items():
        acc = f"{v['midpoint_accuracy']:8.3f}" if "midpoint_accuracy" in v else f"{'':8s}"
        click.echo(
            f"{name:10s} {v['barrier']:9.4f} {v['loss_a']:9.4f} {v['loss_b']:9.4f} {v['midpoint_loss']:9.4f} "
            f"{acc}"
        )
    click.echo(f"wrote {out}.json and {out}.png")


@eval_group.command()
@click.argument("model_a", type=MODEL)
@click.argument("model_b", type=MODEL)
@click.option("--data", required=True, type=click.Path(dir_okay=False))
@click.option("--max-examples", default=None, type=click.IntRange(1))
@click.option(
    "--tolerance",
    default=1e-4,
    show_default=True,
    type=float,
    help="Largest logit difference, relative to the largest logit, that counts as equal.",
)
@DEVICE
@WEIGHTS_MEMORY
def equivalence(
    model_a: str,
    model_b: str,
    data: str,
    max_examples: int | None,
    tolerance: float,
    device: str,
    max_memory: str | None,
) -> None:
    """Max |difference| of logits and hidden states of MODEL_A and MODEL_B on DATA; exit 1 if they differ."""
    import sys

    from mergeflow.eval.equivalence import equivalence as run_equivalence
    from mergeflow.graph.run import resolve_device
    from mergeflow.stats.data import load_data

    res = run_equivalence(
        model_a,
        model_b,
        load_data(data).subset(max_examples),
        resolve_device(device),
        max_memory=parse_size(max_memory, least=1 << 20),
    )
    rel = res["logits"] / max(res["logits_scale"], 1e-30)
    if not _main(device):  # several processes: the same maxima in each; the first reports, all exit alike
        sys.exit(1 if rel > tolerance else 0)
    click.echo(
        f"max |{res['output']} difference|: {res['logits']:.3g} (relative {rel:.3g}); "
        f"max |hidden-state difference|: {res['hidden_states']:.3g}"
    )
    if rel > tolerance:
        click.echo(f"not equivalent: relative {res['output']} difference {rel:.3g} > {tolerance:g}", err=True)
        sys.exit(1)
    click.echo("equivalent")


@eval_group.command()
@click.argument("merged", type=MODEL)
@click.option(
    "--task",
    "tasks",
    required=True,
    multiple=True,
    metavar="NAME=MODEL:DATA",
    help="A fine-tuned model (a folder or a Hub repo id) and its held-out data; its head (and extras) go on "
    "the merged backbone. Repeat for each task.",
)
@click.option("--max-examples", default=None, type=click.IntRange(1))
@click.option(
    "--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the report here."
)
@DEVICE
@WEIGHTS_MEMORY
@SCRATCH
def tasks(
    merged: str,
    tasks: tuple[str, ...],
    max_examples: int | None,
    json_out: str | None,
    device: str,
    max_memory: str | None,
    scratch: str | None,
) -> None:
    """Score MERGED (a merged backbone, or a full merged model) on every task with that task's own head: accuracy,
    token accuracy and entity F1, or loss; beside each fine-tuned model's own score and their ratio. A task model
    larger than --max-memory is placed, and its merged version written to a temporary folder (its size in free
    disk, under --scratch) rather than swapped in memory."""
    from mergeflow.errors import InputError
    from mergeflow.eval.tasks import eval_tasks
    from mergeflow.graph.run import resolve_device
    from mergeflow.io.hub import resolve_model

    parsed = []
    for spec in tasks:
        name, eq, rest = spec.partition("=")
        model, colon, data = rest.rpartition(":")
        if not (name and eq and model and colon and data):
            raise InputError(f"--task {spec}: write NAME=MODEL:DATA")
        local = resolve_model(model, Path.cwd(), f"--task {name}").path  # a folder, or a repo id's snapshot
        parsed.append((name, local, data))
    if len({n for n, _m, _d in parsed}) < len(parsed):
        raise InputError("--task: two tasks have the same name")
    budget = parse_size(max_memory, least=1 << 20)
    report = eval_tasks(
        merged, parsed, resolve_device(device), max_examples, max_memory=budget, scratch=scratch
    )
    if not _main(device):  # several processes: the first writes and reports
        return
    if json_out:
        from mergeflow.io.ownership import atomic_write, check_file_target

        target = check_file_target(json_out, [Path(merged)], "--json")
        atomic_write(target, lambda p: p.write_text(json.dumps(report, indent=2), encoding="utf-8"))
    click.echo(f"{'task':14s} {'metric':12s} {'fine-tuned':>10s} {'merged':>8s} {'normalized':>10s}")
    for name, r in report["tasks"].items():
        norm = f"{r['normalized']:10.3f}" if r["normalized"] is not None else f"{'':10s}"
        click.echo(
            f"{name:14s} {r['metric']:12s} {r['fine_tuned'][r['metric']]:10.4f} {r['merged'][r['metric']]:8.4f} "
            f"{norm}"
        )
    if report["mean_normalized"] is not None:
        click.echo(f"mean normalized score: {report['mean_normalized']:.3f}")
