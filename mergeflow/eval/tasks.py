"""``mergeflow eval tasks``: a merged backbone under each task's own head, scored on each task's data
beside the fine-tuned model itself ("normalized" score: merged / fine-tuned, as the merging literature
reports it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.eval.loss import evaluate
from mergeflow.io.reader import ModelReader
from mergeflow.stats.data import load_data
from mergeflow.stats.model import check_fits, load_model, stored_names


def _strip(names: list[str], prefix: str) -> dict[str, str]:
    """Canonical (prefix removed where the checkpoint stores one) -> stored name."""
    prefixed = any(n.startswith(prefix) for n in names)
    return {(n[len(prefix) :] if prefixed and n.startswith(prefix) else n): n for n in names}


def attach_backbone(loaded: Any, merged_dir: str | Path) -> int:
    """Load the merged checkpoint's tensors into ``loaded.model`` wherever a parameter of its base model
    (its backbone) has the same name, with or without the base-model prefix. Returns how many."""
    model = loaded.model
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    reader = ModelReader("merged", merged_dir)
    merged = _strip(list(reader.tensors), prefix)
    stored = stored_names(model)
    own = _strip(list(stored.values()), prefix)
    by_stored = {s: n for n, s in stored.items()}
    state = dict(model.state_dict())
    backbone = (
        {f"{prefix}{k}" if prefix else k for k in model.base_model.state_dict()} if prefix else set(state)
    )
    new = {}
    for canon, s in own.items():
        name = by_stored[s]
        if canon in merged and name in backbone:
            t = reader.read(merged[canon], dtype=state[name].dtype)
            if tuple(t.shape) != tuple(state[name].shape):
                raise InputError(
                    f"{merged_dir}: tensor {merged[canon]!r} has shape {list(t.shape)}, the task model's "
                    f"{name!r} {list(state[name].shape)}: not the same backbone"
                )
            new[name] = t
    reader.close()
    if not new:
        raise InputError(f"{merged_dir}: none of its tensors is a backbone parameter of the task model")
    model.load_state_dict(new, strict=False)
    return len(new)


def primary(scores: dict[str, float]) -> tuple[str, float]:
    for key in ("entity_f1", "accuracy"):
        if key in scores:
            return key, scores[key]
    return "loss", scores["loss"]


def eval_tasks(
    merged: str | Path,
    tasks: list[tuple[str, str, str]],
    device: torch.device,
    max_examples: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name, model_dir, data_path in tasks:
        data = load_data(data_path).subset(max_examples)
        loaded = load_model(model_dir, device)
        check_fits(loaded, data, model_dir)
        own = evaluate(loaded, data, batch_size)
        n = attach_backbone(loaded, merged)
        got = evaluate(loaded, data, batch_size)
        metric, value = primary(got)
        base = primary(own)[1]
        norm = value / base if metric != "loss" and base > 0 else None
        rows[name] = {
            "model": str(model_dir),
            "data": str(data_path),
            "task": loaded.task,
            "examples": len(data),
            "tensors_attached": n,
            "metric": metric,
            "fine_tuned": own,
            "merged": got,
            "normalized": norm,
        }
    norms = [r["normalized"] for r in rows.values() if r["normalized"] is not None]
    return {
        "merged": str(merged),
        "tasks": rows,
        "mean_normalized": sum(norms) / len(norms) if norms else None,
    }
