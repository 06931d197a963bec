"""The recipe behind `mergeflow align` and aligned copies: anchor + model, passthrough of the aligned model."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from mergeflow.align.catalog import STEPS
from mergeflow.arch.families import family_for
from mergeflow.errors import InputError, RecipeError
from mergeflow.files import read_text_capped
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.schema import Recipe
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import YamlSource, read_yaml


def default_steps(anchor: str) -> list[dict[str, Any]]:
    """Every per-layer symmetry, in the order that recovers them: permute (heads, FFN units), then rotate
    (qk, vo) within the paired heads, then rescale; QK-norm families keep their query/key heads unrotated (and,
    where the norm spans all heads, unscaled)."""
    cfg = Path(anchor) / "config.json"
    model_type = None
    with contextlib.suppress(OSError, ValueError, AttributeError, InputError):
        model_type = json.loads(read_text_capped(cfg, "config", 64 << 20)).get("model_type")
    fam = family_for(model_type)
    qk_norm = fam.qk_norm if fam is not None else ""
    return [
        {"permute": {"heads": True, "ffn": True}},
        {"rotate": {"qk": not qk_norm, "vo": True}},
        {"rescale": {"qk": qk_norm != "full"} if qk_norm == "full" else {}},
    ]


def read_steps(steps_file: str, recipe_ok: bool = False) -> tuple[YamlSource, list[Any]]:
    """The ``align:`` list of a steps file (or, with ``recipe_ok``, of a whole recipe)."""
    src = read_yaml(steps_file)
    if not isinstance(src.data, dict) or not isinstance(src.data.get("align"), list) or not src.data["align"]:
        raise RecipeError([f"{steps_file}: expected a mapping with a non-empty 'align:' list"])
    extra = sorted(set(src.data) - {"align"})
    if extra and not recipe_ok:
        raise RecipeError([f"{steps_file}: only 'align:' belongs in a steps file, not {', '.join(extra)}"])
    return src, src.data["align"]


def display_name(path: str) -> str:
    """A folder's name; for a Hugging Face cache snapshot (models--ORG--NAME/snapshots/COMMIT), NAME."""
    p = Path(path).resolve()
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.parent.parent.name.split("--")[-1]
    return p.name


def model_names(anchor: str, model: str) -> tuple[str, str]:
    """Names for reports: the folders' names (``org/name`` style paths keep their last part), made distinct."""
    a, m = display_name(anchor) or "anchor", display_name(model) or "model"
    if a == m:
        a, m = f"{a} (anchor)", f"{m} (aligned)"
    return a, m


def align_recipe(
    model: str, anchor: str, steps_file: str | None, keep: str = "model", align_dtype: str = "float64"
) -> tuple[Recipe, str]:
    """The recipe that writes ``model`` aligned to ``anchor`` with the steps of ``steps_file`` (default steps
    when None); see :func:`steps_recipe`."""
    if steps_file is not None:
        src, steps = read_steps(steps_file)
        return steps_recipe(model, anchor, steps, Path(steps_file).resolve().parent, src, keep, align_dtype)
    return steps_recipe(
        model,
        anchor,
        default_steps(anchor),
        Path.cwd(),
        YamlSource(None, "<default steps>"),
        keep,
        align_dtype,
    )


def steps_recipe(
    model: str,
    anchor: str,
    steps: list[Any],
    root: Path,
    src: YamlSource | None = None,
    keep: str = "model",
    align_dtype: str = "float64",
) -> tuple[Recipe, str]:
    """The recipe that writes ``model`` aligned to ``anchor`` with ``steps`` (data paths relative to ``root``),
    validated; ``keep="anchor"`` writes the anchor as the same steps re-parameterise it (its norm scales
    folded under an orthogonal stream map; untied if asked). No file is read or written."""
    src = src or YamlSource(None, "<alignment steps>")
    a_name, m_name = model_names(anchor, model)
    data = {
        "models": {a_name: str(Path(anchor).resolve()), m_name: str(Path(model).resolve())},
        "anchor": a_name,
        "align": steps,
        "merge": {"passthrough": {"source": a_name if keep == "anchor" else m_name}},
        "output": {"config": m_name, "tokenizer": m_name},
        **({"align_dtype": align_dtype} if align_dtype != "float64" else {}),
    }
    recipe = validate(YamlSource(data, src.name, src.locations), OPERATORS, STEPS, root=root)
    return recipe, yaml.safe_dump(data, sort_keys=False)
