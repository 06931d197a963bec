"""``mergeflow validate``, ``mergeflow schema`` and ``mergeflow docs``: checking recipes and describing their format."""

from __future__ import annotations

import json

import click

from mergeflow.cli.options import PICKLE
from mergeflow.cli.stages_cmd import is_multistage_file, validate_file


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--recipe-only", is_flag=True, help="Check the recipe file alone, without opening the models.")
@PICKLE
def validate(recipe: str, recipe_only: bool, allow_pickle: bool) -> None:
    """Check RECIPE without reading any weight; print every problem (exit 2) or 'ok'.

    The models are checked against each other from their config files and safetensors headers (for Hub
    models, fetched by HTTP range requests): names, shapes, dtypes, layers, vocabularies, alignment."""
    from mergeflow.align.catalog import STEPS
    from mergeflow.graph import run as runner
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.validate import load_recipe

    if is_multistage_file(recipe):
        validate_file(recipe, recipe_only, runner.Options(device="cpu", allow_pickle=allow_pickle))
        return
    r = load_recipe(recipe, OPERATORS, STEPS)
    if not recipe_only:
        from mergeflow.graph.sources import preflight

        opts = runner.Options(device="cpu", allow_pickle=allow_pickle, headers_only=True)
        preflight(runner.prepare(recipe, opts, recipe=r))
    checked = "" if recipe_only else ", models checked from their headers"
    click.echo(
        f"ok: {len(r.models)} model(s), operator {r.merge.name}, {len(r.overrides)} override(s){checked}"
    )


@click.command()
def schema() -> None:
    """Print the JSON Schema of recipes (for editor completion)."""
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.jsonschema import build_schema

    click.echo(json.dumps(build_schema(dict(OPERATORS.items())), indent=2))


@click.command()
def docs() -> None:
    """Print the recipe reference (docs/recipes.md) generated from the parameter models."""
    from mergeflow.cli.docgen import generate
    from mergeflow.merge.catalog import OPERATORS

    click.echo(generate(dict(OPERATORS.items())), nl=False)
