"""The files of an output besides its weights: config, generation config, tokenizer (copied or built,
with the chat template), sentence-transformers module files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mergeflow.graph.plan import model_dir
from mergeflow.io.module_files import copy_module_files
from mergeflow.io.names import TOKENIZER_FILES
from mergeflow.io.output_dir import copy_support_files
from mergeflow.tokenizer.recipe import write_tokenizer


def write_support(prep: Any, dest: Path) -> list[str]:
    """Write the support files of ``prep``'s output into ``dest`` (new files only); their names."""
    recipe, plan = prep.recipe, prep.plan
    cfg_dir = model_dir(str(prep.readers[recipe.config_source].path))
    tok = recipe.output.tokenizer
    tok_dir = (
        None
        if tok is False or plan.vmap is not None
        else model_dir(str(prep.readers[recipe.config_source if tok is True else tok].path))
    )
    files = copy_support_files(
        dest,
        cfg_dir,
        tok_dir,
        recipe.out_dtype,
        [layer for _m, layer in plan.layer_origin],
        plan.vocab_size,
        plan.config_json,
        plan.config_updates,
    )
    if plan.vmap is not None or prep.chat_template is not None:
        copied = [f for f in files if f in TOKENIZER_FILES]
        files = [f for f in files if f not in copied] + write_tokenizer(
            dest, plan.vmap, prep.chat_template, copied
        )
    if recipe.output.module_files and cfg_dir is not None:
        copied, skipped = copy_module_files(dest, cfg_dir)
        files += copied
        for folder in skipped:
            warnings.warn(
                f"{cfg_dir / folder} holds weights of its own, which mergeflow does not merge: they "
                "were left out of the output",
                stacklevel=2,
            )
    return files
