"""The names of the files mergeflow writes into a model directory."""

from __future__ import annotations

import re

INDEX_NAME = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)
REPORT_FILES = ("README.md", "alignment.json")
SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")


def is_output_name(name: str) -> bool:
    """Whether ``name`` (at the top of a model directory) is a file mergeflow writes there."""
    return (
        name in CONFIG_FILES
        or name in TOKENIZER_FILES
        or name in REPORT_FILES
        or name == INDEX_NAME
        or SHARD.fullmatch(name) is not None
    )
