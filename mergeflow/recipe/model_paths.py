"""A recipe's model and adapter paths checked and made absolute (repo ids and stage outputs kept as they are)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mergeflow.patterns import parse_repo_ref
from mergeflow.recipe.schema import ModelEntry

WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


class Problems(Protocol):
    def add(self, path: tuple[Any, ...], msg: str) -> None: ...


def model_path(
    name: str, entry: ModelEntry, root: Path, probs: Problems, stages: Mapping[str, Path] | None = None
) -> str:
    if entry.stage is not None:
        if stages is None or entry.stage not in stages:
            known = f"its other stages: {', '.join(stages)}" if stages else "a single recipe has no stages"
            probs.add(
                ("models", name, "stage"), f"'{entry.stage}' is not another stage of this file ({known})"
            )
            return entry.path
        return str(stages[entry.stage])
    p = Path(entry.path).expanduser()
    p = p if p.is_absolute() else (root / p)
    if not p.exists() and parse_repo_ref(entry.path) is not None:
        return entry.path  # a Hugging Face repo id: resolved (cache or download) when the run is prepared
    if entry.subfolder and p.exists():
        p = p / entry.subfolder
    if not p.exists():
        probs.add(("models", name), f"path does not exist: {p} (nor is it a repo id org/name[@revision])")
    elif p.is_dir() and not any((p / f).exists() for f in WEIGHT_FILES):
        probs.add(
            ("models", name),
            f"no weights in {p} (expected model.safetensors or model.safetensors.index.json)",
        )
    elif p.is_file() and p.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
        probs.add(("models", name), f"not a checkpoint file: {p}")
    return str(p.resolve())


def lora_path(name: str, lora: str | None, root: Path, probs: Problems, check: bool) -> str | None:
    if lora is None or not check:
        return lora
    p = Path(lora).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists() and parse_repo_ref(lora) is not None:
        return lora
    if not p.is_dir():
        probs.add(("models", name, "lora"), f"adapter folder does not exist: {p}")
    elif not (p / "adapter_config.json").is_file():
        probs.add(("models", name, "lora"), f"not a PEFT adapter (no adapter_config.json in {p})")
    return str(p.resolve())
