"""`mergeflow convert` (mergekit configs) and `mergeflow eval` (measurements)."""

from __future__ import annotations

import json

import click

from mergeflow.cli.options import MODEL, PICKLE
from mergeflow.errors import InputError


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
def convert(config: str) -> None:
    """Print the native recipe equivalent to a mergekit CONFIG, or to a mergekit-multi file (documents separated
    by ---) as a stages: list (paths as written, relative to the working
    directory in mergekit; put the recipe where they resolve, or make them absolute)."""
    import yaml

    from mergeflow.recipe.mergekit import convert as convert_mergekit
    from mergeflow.recipe.mergekit import is_mergekit
    from mergeflow.recipe.stages import convert_file
    from mergeflow.recipe.yaml_source import read_yaml_docs

    docs = read_yaml_docs(config)
    if not any(is_mergekit(d.data) for d in docs):
        raise InputError(f"{config}: not a mergekit config (it has no merge_method)")
    native = convert_file(docs) if len(docs) > 1 else convert_mergekit(docs[0])
    click.echo(f"# converted from {config} by mergeflow convert", nl=True)
    click.echo(yaml.safe_dump(native, sort_keys=False), nl=False)


@click.group(name="eval")
def eval_group() -> None:
    """Measure models: parameter distance, loss barrier along the linear path, functional equivalence."""


@eval_group.command()
@click.argument("model_a", type=MODEL)
@click.argument("model_b", type=MODEL)
@click.option(
    "--by",
    type=click.Choice(["total", "module"]),
    default="module",
    show_default=True,
    help="Report the total only, or per module type (qk, vo, ffn, norms, embeddings, other).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@PICKLE
def distance(model_a: str, model_b: str, by: str, as_json: bool, allow_pickle: bool) -> None:
    """Squared L2 distance between MODEL_A and MODEL_B, absolute and relative to ||A||^2."""
    from mergeflow.eval.distance import model_distance
    from mergeflow.io.reader import ModelReader

    a = ModelReader("A", model_a, allow_pickle=allow_pickle)
    b = ModelReader("B", model_b, allow_pickle=allow_pickle)
    rows = model_distance(a, b).rows()
    if by == "total":
        rows = rows[-1:]
    if as_json:
        click.echo(json.dumps({m: {"squared": d, "relative": r} for m, d, r in rows}, indent=2))
        return
    click.echo(f"{'module':12s} {'squared L2':>14s} {'relative to |A|^2':>18s}")
    for m, d, r in rows:
        click.echo(f"{m:12s} {d:14.6g} {r:18.6g}")
