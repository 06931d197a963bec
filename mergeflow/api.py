"""mergeflow's Python API: what the command line does, as functions. Nothing here prints or draws.

    from mergeflow import api
    recipe = api.load_recipe("merge.yml")                 # validated; RecipeError lists every problem
    result = api.merge("merge.yml", "out/", api.Options(device="cpu"))
    aligned = api.align("org/model-b", anchor="org/model-a", out="b-aligned/")
    print(aligned.alignment["totals"])

Long work reports to a :class:`~mergeflow.progress.Progress` (``progress=``): :func:`mergeflow.progress.callback`
turns a function of :class:`~mergeflow.progress.Event` into one; the default reports nowhere. Errors are
:class:`~mergeflow.errors.MergeflowError` subclasses whose message is one line per problem (the CLI prints
them as they are). :class:`Options` are the command line's flags; ``tune_malloc`` (off here, on in the
CLI) changes how this process's allocator returns memory, so it is the caller's choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeflow.errors import InputError, MergeflowError, RecipeError
from mergeflow.graph.run import Options, Prepared, Result, prepare, resolve_device
from mergeflow.graph.run import run as _run
from mergeflow.progress import SILENT, Event, Progress, callback
from mergeflow.recipe.schema import Recipe

__all__ = [
    "Event",
    "InputError",
    "MergeflowError",
    "Options",
    "Prepared",
    "Progress",
    "Recipe",
    "RecipeError",
    "Result",
    "SILENT",
    "align",
    "align_steps",
    "barrier",
    "callback",
    "load_recipe",
    "merge",
    "plan",
    "prepare_align",
]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (no weight, no model file is read)."""
    from mergeflow.align.catalog import STEPS
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.validate import load_recipe as _load

    return _load(str(path), OPERATORS, STEPS)


def plan(recipe: str | Path, options: Options | None = None) -> Prepared:
    """Open the recipe's models (headers and configs) and plan the merge; ``.plan`` says what will be read,
    computed and written. Nothing is written."""
    return prepare(str(recipe), options or Options())


def merge(
    recipe: str | Path | Prepared,
    out: str | Path,
    options: Options | None = None,
    progress: Progress | None = None,
) -> Result:
    """Run a recipe (a path, or what :func:`plan` returned) into the directory ``out``, which appears only once
    complete; ``options.force`` replaces an earlier mergeflow output, never anything else."""
    opts = options or Options()
    prep = recipe if isinstance(recipe, Prepared) else prepare(str(recipe), opts)
    return _run(prep, out, opts, progress)


def align_steps(anchor: str | Path) -> list[dict[str, Any]]:
    """The default alignment steps for ``anchor``'s family (every exact per-layer symmetry)."""
    from mergeflow.graph.align_recipe import default_steps

    return default_steps(str(anchor))


Steps = list[dict[str, Any]] | str | Path | None


def _local(ref: str | Path, who: str) -> str:
    """A model reference (folder, file, or Hub repo id ``org/name[@revision]``) as a local path, as the CLI's
    model arguments are: a repo id comes from the Hugging Face cache or is downloaded into it."""
    from mergeflow.io.hub import resolve_model

    return resolve_model(str(ref), Path.cwd(), who).path


def prepare_align(
    model: str | Path,
    anchor: str | Path,
    steps: Steps = None,
    options: Options | None = None,
    keep: str = "model",
    root: str | Path | None = None,
    align_dtype: str = "float64",
) -> Prepared:
    """The planned alignment of ``model`` to ``anchor`` (validated; nothing written): see :func:`align`;
    ``align_dtype``: the recipe key of that name (float32: faster at size)."""
    from mergeflow.graph.align_recipe import align_recipe, steps_recipe

    opts = options or Options(label="aligning")
    model, anchor = _local(model, "model"), _local(anchor, "anchor")
    if steps is None or isinstance(
        steps, (str, Path)
    ):  # the default, or a steps file (errors name its lines)
        recipe, text = align_recipe(model, anchor, None if steps is None else str(steps), keep, align_dtype)
        return prepare("<align>" if steps is None else str(steps), opts, recipe=recipe, recipe_text=text)
    recipe, text = steps_recipe(
        model, anchor, steps, Path(root) if root else Path.cwd(), keep=keep, align_dtype=align_dtype
    )
    return prepare("<align>", opts, recipe=recipe, recipe_text=text)


def align(
    model: str | Path,
    anchor: str | Path,
    out: str | Path,
    steps: Steps = None,
    options: Options | None = None,
    progress: Progress | None = None,
    keep: str = "model",
    root: str | Path | None = None,
    align_dtype: str = "float64",
) -> Result:
    """Write ``model`` re-parameterised toward ``anchor`` (same function) into ``out``. ``steps``: the recipe's
    ``align:`` list (default :func:`align_steps`; data paths relative to ``root``, default the working
    directory) or a YAML file holding one. ``keep="anchor"`` writes the anchor as the steps re-parameterise it
    (folded norms), the endpoint a merge interpolates from. ``align_dtype="float32"`` aligns each layer in
    float32 (half the memory per layer, up to twice as fast at size). ``result.alignment`` holds the report."""
    opts = options or Options(label="aligning")
    return _run(prepare_align(model, anchor, steps, opts, keep, root, align_dtype), out, opts, progress)


def barrier(
    model_a: str | Path,
    model_b: str | Path,
    data: str | Path,
    steps: list[dict[str, Any]] | None = None,
    points: int = 11,
    device: str = "auto",
    max_examples: int | None = None,
    progress: Progress | None = None,
    max_memory: int | None = None,
    scratch: str | Path | None = None,
) -> dict[str, Any]:
    """Loss along (1 - l) A + l B, naive and after each of ``steps`` added one at a time (see `mergeflow eval
    barrier`); returns the report (every point, the barrier of each variant). ``max_memory``: the most bytes
    of weights in memory; larger models are evaluated placed by accelerate, their points written to disk.
    ``scratch``: the folder temporary models go under (default: the system's temporary folder)."""
    from mergeflow.eval.barrier import barrier_report
    from mergeflow.stats.data import load_data
    from mergeflow.stats.parallel import process_group

    model_a, model_b = _local(model_a, "model_a"), _local(model_b, "model_b")
    ds = load_data(str(data)).subset(max_examples)
    shown = (
        (progress or SILENT) if process_group(resolve_device(device)).main else SILENT
    )  # one bar per launch
    bar = shown.bar("barrier", points * (1 + len(steps or [])), unit="pt")
    try:
        return barrier_report(
            str(model_a),
            str(model_b),
            ds,
            steps,
            points,
            resolve_device(device),
            bar.update,
            max_memory,
            scratch,
        )
    finally:
        bar.close()
