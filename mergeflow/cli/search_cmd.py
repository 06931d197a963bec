"""``mergeflow search``: find a recipe's best parameters (Optuna; trials in parallel on Ray; resumable)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from mergeflow.cli.options import DEVICE, MEMORY, PARENTS, QUIET
from mergeflow.cli.output import parse_size
from mergeflow.cli.progress import console
from mergeflow.errors import InputError


@click.command()
@click.argument("search_file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, help="Output folder: best.yml, trials.csv/json, plots, best/.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Trials run at once (Ray actors; 1 runs in this process). Default: one per GPU, else as many as "
    "the cores and memory allow.",
)
@click.option(
    "--address",
    default=None,
    help="Join this Ray cluster (e.g. 'auto' or HOST:PORT) instead of starting one on this machine.",
)
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Override search.trials.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the search file, print the space and the cost of a trial; run nothing.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it is an output mergeflow wrote.")
@DEVICE
@MEMORY
@PARENTS
@QUIET
def search(
    search_file: str,
    out: str,
    workers: int | None,
    address: str | None,
    trials: int | None,
    dry_run: bool,
    force: bool,
    device: str,
    max_memory: str | None,
    parents: bool,
    quiet: bool,
) -> None:
    """Search the parameters marked {search: ...} in SEARCH_FILE (a recipe with a 'search:' section): each
    trial merges in memory and is scored on the objectives' data; the study lives in a SQLite file beside
    OUT, so the same command continues an interrupted search."""
    from mergeflow.search.run import read_search, storage_path

    sf = read_search(search_file)
    n_trials = trials or sf.section.trials
    cost = trial_cost(sf, device)
    if dry_run or not quiet:
        click.echo(f"{len(sf.dims)} searched value(s), {n_trials} trials, sampler {sf.section.sampler}:")
        for d in sf.dims.values():
            click.echo(f"  {d.name:48s} {d.describe()}")
        click.echo(
            f"per trial: reads {cost['read']}, merges {cost['merged']} in memory, scores "
            f"{cost['examples']} examples"
        )
    if dry_run:
        return
    storage = storage_path(sf, Path(out))
    n = workers or default_workers(device, cost["bytes"])
    run_study(
        sf,
        Path(out),
        storage,
        n_trials,
        n,
        address,
        device,
        force,
        parents,
        quiet,
        cost["bytes"],
        parse_size(max_memory),
    )


def trial_cost(sf: Any, device: str) -> dict[str, Any]:
    """What one trial reads, holds and scores, from the plan of the space's first corner."""
    from mergeflow.align.catalog import STEPS
    from mergeflow.cli.output import human
    from mergeflow.graph import run as runner
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.validate import validate
    from mergeflow.recipe.yaml_source import YamlSource
    from mergeflow.stats.data import load_data

    root = sf.path.resolve().parent
    recipe = validate(YamlSource(sf.corners[0], str(sf.path)), OPERATORS, STEPS, root=root)
    prep = runner.prepare(
        sf.path, runner.Options(device=device, headers_only=True), recipe=recipe, recipe_text=""
    )
    read = sum(r.total_bytes for r in prep.readers.values())
    merged = prep.plan.bytes_written
    for r in prep.readers.values():
        r.close()
    examples = 0
    for o in sf.section.objective:
        n = len(load_data(Path(o.data) if Path(o.data).is_absolute() else root / o.data))
        examples += min(n, o.max_examples or n)
    return {"read": human(read), "merged": human(merged), "examples": examples, "bytes": read + 2 * merged}


def default_workers(device: str, trial_bytes: int) -> int:
    import torch

    from mergeflow.graph.memory import default_max_memory

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return max(1, torch.cuda.device_count())
    cores = os.cpu_count() or 1
    fit = max(1, default_max_memory() // max(trial_bytes, 1))
    return max(1, min(cores // 2, fit))


def run_study(
    sf: Any,
    out: Path,
    storage: Path,
    n_trials: int,
    n_workers: int,
    address: str | None,
    device: str,
    force: bool,
    parents: bool,
    quiet: bool,
    trial_bytes: int = 0,
    max_memory: int | None = None,
) -> None:
    from tqdm import tqdm

    from mergeflow.graph import run as runner
    from mergeflow.io.output_dir import OutputDir
    from mergeflow.search.report import best_recipe, write_outputs
    from mergeflow.search.run import accepts, search_inputs, study_lock
    from mergeflow.search.study import (
        finished,
        interrupted,
        local_workers,
        open_study,
        ray_workers,
        requeue_interrupted,
        search_loop,
    )
    from mergeflow.search.trial import Evaluator

    # a merge too large for a trial's memory is written beside OUT and deleted after scoring
    args = (
        str(sf.path),
        str(sf.path.resolve().parent),
        list(sf.section.objective),
        str(runner.resolve_device(device)),
        max_memory,
        str(Path(out).resolve().parent),
    )
    with study_lock(storage):
        study = open_study(str(storage), sf.section.sampler, sf.section.seed)
        again = requeue_interrupted(study)
        done = len(finished(study))
        if not quiet and (done or again):
            click.echo(f"resuming {storage}: {done} trial(s) kept, {again} interrupted one(s) queued again")
        if n_workers > 1 or address is not None:
            try:
                import ray  # noqa: F401
            except ImportError:
                raise InputError(
                    "--workers > 1 and --address run trials on Ray: pip install 'mergeflow[search]'"
                ) from None
            cpus = max(1, (os.cpu_count() or 1) // n_workers)
            gpus = 1.0 if device.startswith("cuda") else 0.0
            pool = ray_workers(args, n_workers, address, cpus, gpus, trial_bytes)
        else:
            pool = local_workers(Evaluator(*args))
        start = time.monotonic()
        bar = tqdm(
            total=n_trials,
            initial=min(done, n_trials),
            desc="search",
            unit="trial",
            disable=quiet,
            dynamic_ncols=True,
        )
        seen = [0]
        errors: list[str] = []

        def on_result(trial: Any, result: dict[str, Any]) -> None:
            seen[0] += 1
            errors.append(result.get("error", ""))
            if len(errors) == min(3, n_trials) and all(errors) and len(set(errors)) == 1:
                raise InputError(
                    f"the first {len(errors)} trials all failed, so will the others: {errors[0]}"
                )
            bar.update(1)
            best = _best(study)
            rate = seen[0] / max(time.monotonic() - start, 1e-9) * 60
            bar.set_postfix_str(
                f"best {best.value:.4g} (trial {best.number}), {rate:.1f}/min" if best else f"{rate:.1f}/min",
                refresh=False,
            )
            if "error" in result and not quiet:
                tqdm.write(f"trial {trial.number} failed: {result['error']}")

        try:
            search_loop(study, sf.tree, accepts, pool, n_trials, sf.section.time_budget, on_result)
        finally:
            bar.close()
            pool.close()
        trials = study.get_trials(deepcopy=False)
        best = _best(study)
    out_dir = OutputDir(out, force, False, search_inputs(sf), parents)
    with out_dir as tmp:
        gone = interrupted(study)
        files = write_outputs(
            tmp,
            sf.tree,
            [t for t in trials if t.number not in gone],
            best,
            f"best recipe of {sf.path.name} ({len(finished(study))} trials, {storage.name})",
            sf.path.resolve().parent,
            sf.section.plots,
        )
        if best is not None and sf.section.write_best:
            from mergeflow.align.catalog import STEPS
            from mergeflow.merge.catalog import OPERATORS
            from mergeflow.recipe.validate import validate
            from mergeflow.recipe.yaml_source import YamlSource

            data = best_recipe(sf.tree, best.params)
            recipe = validate(YamlSource(data, str(sf.path)), OPERATORS, STEPS, root=sf.path.resolve().parent)
            opts = runner.Options(device=device, label="best merge")
            prep = runner.prepare(sf.path, opts, recipe=recipe, recipe_text=(tmp / "best.yml").read_text())
            runner.run(prep, tmp / "best", opts, progress=console(quiet))
            files += sorted(str(f.relative_to(tmp)) for f in (tmp / "best").rglob("*") if f.is_file())
        out_dir.written = files
    if not quiet:
        msg = f"best: trial {best.number}, score {best.value:.6g}" if best else "no trial finished"
        click.echo(
            f"{msg}; wrote {out} (best.yml, trials.csv, trials.json, plots{', best/' if files[-1].startswith('best/') else ''})"
        )


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:
        return None
