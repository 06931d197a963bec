"""Multi-stage files in ``run``, ``plan`` and ``validate``: options, loading, what is printed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from mergeflow.cli.output import human
from mergeflow.cli.progress import console

INTERMEDIATE = click.option(
    "--intermediate-dir",
    default=None,
    metavar="DIR",
    help="Multi-stage files: where the named stages' outputs go, one folder each, reused when up to date. "
    "Default: OUT.stages beside OUT.",
)
STAGE = click.option(
    "--stage",
    "upto",
    default=None,
    metavar="NAME",
    help="Multi-stage files: run only stage NAME and the stages it uses.",
)


def is_multistage_file(path: str) -> bool:
    from mergeflow.recipe.stages import is_multistage
    from mergeflow.recipe.yaml_source import read_yaml_docs

    return is_multistage(read_yaml_docs(path))


def intermediate_for(out: str | None, given: str | None) -> Path:
    if given is not None:
        return Path(given).absolute()
    if out is None:
        return Path(tempfile.gettempdir()) / "mergeflow-unplaced-stages"  # plan/validate: never written
    o = Path(out).absolute()
    return o.parent / f"{o.name}.stages"


def load(path: str, intermediate: Path) -> Any:
    from mergeflow.align.catalog import STEPS
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.stages import load_stages

    return load_stages(path, intermediate, OPERATORS, STEPS)


def check_stage(sf: Any, upto: str | None) -> None:
    from mergeflow.errors import InputError

    if upto is not None and upto not in sf.by_name() and not (upto == "final" and sf.final.name is None):
        raise InputError(f"--stage {upto}: no such stage; stages: {', '.join(s.label for s in sf.stages)}")


def run_file(path: str, out: str, opts: Any, intermediate: str | None, upto: str | None, quiet: bool) -> None:
    from mergeflow.graph.stages import run_stages

    sf = load(path, intermediate_for(out, intermediate))
    check_stage(sf, upto)
    upto = sf.final.name if upto == "final" else upto
    echo = None if quiet else click.echo
    done = run_stages(sf, path, Path(out), opts, progress=console(quiet), upto=upto, echo=echo)
    if not quiet:
        ran = sum(r is not None for _sp, r in done)
        click.echo(f"ran {ran} of {len(done)} stage(s); intermediate outputs in {sf.intermediate}")


def plan_file(path: str, opts: Any, intermediate: str | None) -> None:
    """The stage graph, each stage's reads and writes, and which stages are up to date."""
    from mergeflow.graph.stages import plan_stages

    sf = load(path, intermediate_for(None, intermediate))
    with tempfile.TemporaryDirectory(prefix="mergeflow-stages-") as scratch:
        plans = plan_stages(sf, path, Path("OUT"), opts, Path(scratch))
    click.echo(f"recipe: {path} ({len(plans)} stages; intermediate outputs in {sf.intermediate})")
    for sp in plans:
        st, p = sp.stage, sp.prep.plan
        uses = f" <- {', '.join(st.uses)}" if st.uses else ""
        where = "OUT" if st is sf.final else str(sp.out)
        state = "up to date" if sp.fresh else "to run"
        click.echo(f"  {st.label}{uses}: {', '.join(st.recipe.models)} -> {where} [{state}]")
        click.echo(
            f"    {st.recipe.merge.name}, {p.n_tensors} tensors; read {human(p.bytes_read)}, write "
            f"{human(p.bytes_written)} in {len(p.layouts)} shard(s)"
        )


def validate_file(path: str, recipe_only: bool, opts: Any) -> None:
    from mergeflow.graph.stages import plan_stages

    sf = load(path, intermediate_for(None, None))
    if not recipe_only:
        with tempfile.TemporaryDirectory(prefix="mergeflow-stages-") as scratch:
            plan_stages(sf, path, Path("OUT"), opts, Path(scratch))
    checked = "" if recipe_only else ", every stage planned from the models' headers"
    click.echo(f"ok: {len(sf.stages)} stages ({', '.join(s.label for s in sf.stages)}){checked}")
