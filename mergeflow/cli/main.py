"""The ``mergeflow`` command. The only layer that touches argv and the console.

Exit codes: 0 success, 2 bad input (recipe, models, paths), 1 anything else.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

import click

from mergeflow.cli.convert_eval import convert, eval_group
from mergeflow.cli.exits import interrupted, leave_if_lanes_busy, sigterm, warning_line
from mergeflow.cli.learn_cmd import learn_aligner
from mergeflow.cli.lora_cmd import extract_lora
from mergeflow.cli.moe_cmd import moe
from mergeflow.cli.options import DEVICES, DISK, MEMORY, MODEL, PARENTS, PICKLE, QUIET, REPORT, STRICT
from mergeflow.cli.output import check_report, parse_size, print_alignment, print_summary, write_run_report
from mergeflow.cli.plan_cmd import plan
from mergeflow.cli.progress import console
from mergeflow.cli.recipe_cmds import docs, schema, validate
from mergeflow.cli.search_cmd import search
from mergeflow.cli.stages_cmd import INTERMEDIATE, STAGE, is_multistage_file, run_file
from mergeflow.cli.stats_cmd import stats
from mergeflow.errors import InputError, MergeflowError, RecipeError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergeflow")
def cli() -> None:
    """Merge neural-network checkpoints from YAML recipes, streaming tensor by tensor."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("out_pos", required=False, metavar="[OUT]")
@click.option("-o", "--out", "out_opt", default=None, help="Output model directory (or give it as OUT).")
@DEVICES
@MEMORY
@DISK
@PICKLE
@click.option(
    "--force",
    is_flag=True,
    help="Replace OUT if it is an output mergeflow wrote (only once the new "
    "merge is complete); nothing else is ever replaced.",
)
@click.option(
    "--check-finite", is_flag=True, help="Stop with the tensor's name if a merged tensor has NaN/Inf."
)
@click.option(
    "--no-prefetch", is_flag=True, help="Do not read the next tensors while merging the current one."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run into OUT: shards it completed are kept "
    "if their checksums still match and the recipe and inputs are unchanged.",
)
@STRICT
@PARENTS
@REPORT
@QUIET
@INTERMEDIATE
@STAGE
def run(
    recipe: str,
    out_pos: str | None,
    out_opt: str | None,
    device: str,
    max_memory: str | None,
    disk_budget: str | None,
    allow_pickle: bool,
    force: bool,
    check_finite: bool,
    no_prefetch: bool,
    resume: bool,
    strict: bool,
    parents: bool,
    report: str | None,
    quiet: bool,
    intermediate_dir: str | None,
    upto: str | None,
) -> None:
    """Merge the models of RECIPE into the directory OUT. A multi-stage RECIPE (mergekit-multi's documents
    separated by ---, or a stages: list) runs its stages in order, the final one into OUT."""
    from mergeflow.graph import run as runner

    if out_pos and out_opt and out_pos != out_opt:
        raise InputError(f"two outputs given ({out_pos} and {out_opt}); give one")
    out = out_opt or out_pos
    if not out:
        raise InputError("no output directory: give it as OUT or with -o/--out")
    opts = runner.Options(
        tune_malloc=True,
        device=device,
        max_memory=parse_size(max_memory),
        force=force,
        allow_pickle=allow_pickle,
        check_finite=check_finite,
        prefetch=not no_prefetch,
        resume=resume,
        strict=strict,
        parents=parents,
        disk_budget=parse_size(disk_budget, "--disk-budget", 1),
    )
    if is_multistage_file(recipe):
        if report:
            raise InputError("--report: not available for multi-stage files yet")
        run_file(recipe, out, opts, intermediate_dir, upto, quiet)
        return
    if upto is not None or intermediate_dir is not None:
        raise InputError(
            "--stage and --intermediate-dir are for multi-stage files; this recipe has one stage"
        )
    prep = runner.prepare(recipe, opts)
    check_report(report, prep, out)
    note(prep, quiet)
    result = runner.run(prep, out, opts, progress=console(quiet))
    write_run_report(report, result, prep)
    tasks = []
    if prep.recipe.output.task_models:
        from mergeflow.graph.task_models import write_task_models

        tasks = write_task_models(prep, result.out, opts, progress=console(quiet))
    if not quiet:
        print_summary(result, prep, resume, runner.peak_rss_bytes(), tasks)


@cli.command()
@click.argument("model", type=MODEL)
@click.option("--anchor", required=True, type=MODEL, help="Model to align MODEL to (left unchanged).")
@click.option("-o", "--out", required=True, help="Output directory for the aligned model.")
@click.option(
    "--steps",
    "steps_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file with an 'align:' list in recipe syntax. Default: permute (heads, ffn), rotate (qk, vo), "
    "rescale; without QK rotation for QK-norm families.",
)
@DEVICES
@MEMORY
@PICKLE
@click.option("--force", is_flag=True, help="Replace OUT if it is an output mergeflow wrote.")
@click.option(
    "--align-dtype",
    type=click.Choice(["float64", "float32"]),
    default="float64",
    show_default=True,
    help="Precision each layer is aligned in: float32 halves the memory per layer and is up to twice as fast on "
    "large models (the sketch solver; the exact one gains about a fifth); the recipe key align_dtype.",
)
@PARENTS
@REPORT
@QUIET
def align(
    model: str,
    anchor: str,
    out: str,
    steps_file: str | None,
    device: str,
    max_memory: str | None,
    allow_pickle: bool,
    force: bool,
    align_dtype: str,
    parents: bool,
    report: str | None,
    quiet: bool,
) -> None:
    """Write MODEL re-parameterised toward ANCHOR: the same function, weights as close as the symmetries allow."""
    from mergeflow import api

    opts = api.Options(
        tune_malloc=True,
        device=device,
        max_memory=parse_size(max_memory),
        force=force,
        allow_pickle=allow_pickle,
        parents=parents,
        label="aligning",
    )
    prep = api.prepare_align(model, anchor, steps_file, opts, align_dtype=align_dtype)
    check_report(report, prep, out)
    note(prep, quiet)
    result = api.merge(prep, out, opts, console(quiet))
    write_run_report(report, result, prep)
    if not quiet:
        click.echo(f"wrote {result.out}: '{model}' aligned to '{anchor}' in {result.seconds:.2f} s")
        print_alignment(result)


def note(prep: object, quiet: bool) -> None:
    """A cost note for the prepared run (on stderr, unless quiet)."""
    from mergeflow.graph.cost_notes import ffn_note

    line = None if quiet else ffn_note(prep)
    if line:
        click.echo(line, err=True)


cli.add_command(convert)
cli.add_command(validate)
cli.add_command(schema)
cli.add_command(docs)
cli.add_command(eval_group)
cli.add_command(stats)
cli.add_command(plan)
cli.add_command(extract_lora)
cli.add_command(moe)
cli.add_command(search)
cli.add_command(learn_aligner)
import mergeflow.cli.eval_cmds  # noqa: E402,F401  (registers eval barrier/equivalence)


def main(argv: list[str] | None = None) -> None:
    """The ``mergeflow`` command; ``argv`` None: run as a program (the console script, ``python -m``)."""
    try:
        _main(argv)
    except SystemExit as exc:
        leave_if_lanes_busy(exc, argv is None)
        raise


def _main(argv: list[str] | None) -> None:
    signal.signal(signal.SIGTERM, sigterm)
    warnings.formatwarning = warning_line
    try:
        cli.main(args=argv, prog_name="mergeflow", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns Ctrl-C into Abort; what was interrupted is its cause
        interrupted(exc.__cause__ or exc.__context__)
    except click.UsageError as exc:  # one line, as every other bad input
        where = exc.ctx.command_path if exc.ctx is not None else "mergeflow"
        click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except RecipeError as exc:
        click.echo("\n".join(f"error: {p}" for p in exc.problems), err=True)
        sys.exit(2)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except MergeflowError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        interrupted(exc)
    except MemoryError:
        click.echo("error: out of memory; lower --max-memory or use a smaller compute dtype", err=True)
        sys.exit(1)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(2 if exc.errno in (28, 13, 30, 122) else 1)
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get("MERGEFLOW_DEBUG"):
            raise
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, on an accelerator: a resource, not a bug
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
            click.echo(
                f"error: the device ran out of memory ({first}); lower --max-memory, a batch size (e.g. "
                "refine's batch_size) or the compute dtype, or use refine: {mode: layered}",
                err=True,
            )
            sys.exit(1)
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (set MERGEFLOW_DEBUG=1 for the traceback)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
