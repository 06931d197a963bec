"""Checks of the sections that shape the output: partial, output, tokenizer, chat_template."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mergeflow.recipe.tokenizer_schema import NAMED_TEMPLATES, is_template_text, token_models


def check_outputs(
    sec: Mapping[str, Any],
    data: Mapping[str, Any],
    models: Mapping[str, Any],
    add: Callable[[tuple[Any, ...], str], None],
) -> None:
    """Add a problem for each model name these sections give that is not a model, and each combination
    that cannot work."""
    out = sec.get("output")
    names = list(models)
    if out is not None and out.task_models and sec.get("merge_only", "all") == "all":
        add(("output", "task_models"), "needs merge_only (the part merged; the rest is each task's own)")
    keep = getattr(sec.get("partial"), "keep", None)
    if keep is not None and keep not in models:
        add(("partial", "keep"), f"'{keep}' is not a key of models ({', '.join(names)})")
    if out is not None:
        if out.config is not None and out.config not in models:
            add(("output", "config"), f"'{out.config}' is not a key of models")
        if isinstance(out.tokenizer, str) and out.tokenizer not in models:
            add(("output", "tokenizer"), f"'{out.tokenizer}' is not a key of models")
    tok = sec.get("tokenizer")
    if tok is not None:
        for where, ref in token_models(tok):
            if ref not in models:
                add(("tokenizer", *where), f"'{ref}' is not a key of models ({', '.join(names)})")
        if out is not None and "tokenizer" in (data.get("output") or {}):
            add(
                ("output", "tokenizer"),
                "give the output's tokenizer in tokenizer: or output.tokenizer, not both",
            )
        if sec.get("slices"):
            add(("tokenizer",), "a tokenizer section cannot be combined with slices yet")
    template = sec.get("chat_template")
    if template is not None and not is_template_text(template):
        add(
            ("chat_template",),
            f"{template[:40]!r} is neither a template name (auto, "
            f"{', '.join(NAMED_TEMPLATES)}) nor a Jinja template",
        )
