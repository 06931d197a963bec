"""The README.md model card of a merged model: what was merged, how, and the recipe itself."""

from __future__ import annotations

from pathlib import Path

import mergeflow
from mergeflow.io.ownership import write_new


def write_card(
    out: Path,
    recipe_text: str,
    models: dict[str, str],
    operator: str,
    n_tensors: int,
    extra: dict[str, str] | None = None,
) -> None:
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- mergeflow",
        "- merge",
        "---",
        "",
        "# Merged model",
        "",
        f"Made with mergeflow {mergeflow.__version__} "
        f"using the `{operator}` operator over {n_tensors} tensors.",
        "",
        "## Source models",
        "",
        *[f"- `{name}`: `{path}`" for name, path in models.items()],
        "",
    ]
    if extra:
        lines += ["## Run", "", *[f"- {k}: {v}" for k, v in extra.items()], ""]
    fence = "```"
    while fence in recipe_text:
        fence += "`"
    lines += ["## Recipe", "", f"{fence}yaml", recipe_text.rstrip("\n"), fence, ""]
    write_new(out / "README.md", "\n".join(lines))
