"""What `prepare` hands to `run` (a validated recipe, its open models and plan), and what `run` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mergeflow.graph.plan import Plan
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


@dataclass
class Prepared:
    recipe: Recipe
    recipe_text: str
    readers: dict[str, ModelReader]
    plan: Plan
    device: torch.device
    max_memory: int
    inputs: list[Path] = field(default_factory=list)  # every file or folder read: none is written over
    chat_template: str | None = None  # the Jinja text written into the output's tokenizer config
    lanes: tuple[torch.device, ...] = ()  # where layers are aligned a few at a time (graph.lanes)


@dataclass
class Result:
    out: Path
    plan: Plan
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    alignment: dict | None = None  # summary of the alignment report, when the recipe aligns
    resumed_shards: int = 0  # shards kept from an interrupted run (--resume)
    downloaded: int = 0  # bytes of Hub shards fetched during the run
    download_peak: int = 0  # with --disk-budget: the most bytes of them held at once
    download_seconds: float = 0.0  # from the run's start of downloads to the last shard on disk
