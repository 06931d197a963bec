"""``mergeflow eval tasks``: a merged backbone under each task's own head, scored on each task's data
beside the fine-tuned model itself ("normalized" score: merged / fine-tuned, as the merging literature
reports it)."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.eval.loss import evaluate
from mergeflow.io.dtypes import ST_TO_TORCH
from mergeflow.io.reader import ModelReader
from mergeflow.io.scratch import scratch_folder
from mergeflow.io.stream_save import Entry, save_streamed
from mergeflow.stats.data import load_data
from mergeflow.stats.model import check_fits, freed, load_model, stored_bytes, stored_names
from mergeflow.stats.parallel import Group, process_group


def _strip(names: list[str], prefix: str) -> dict[str, str]:
    """Canonical (prefix removed where the checkpoint stores one) -> stored name."""
    prefixed = any(n.startswith(prefix) for n in names)
    return {(n[len(prefix) :] if prefixed and n.startswith(prefix) else n): n for n in names}


def backbone_sources(loaded: Any, reader: ModelReader) -> dict[str, str]:
    """Parameter name of ``loaded.model`` -> the merged checkpoint's tensor for it (``reader``: that checkpoint):
    every parameter of the model's base model (its backbone) that the checkpoint holds, with or without the
    base-model prefix, shapes checked. Works on placed models (meta parameters have shapes)."""
    model = loaded.model
    merged_dir = reader.path
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    merged = _strip(list(reader.tensors), prefix)
    stored = stored_names(model)
    own = _strip(list(stored.values()), prefix)
    by_stored = {s: n for n, s in stored.items()}
    state = dict(model.state_dict())
    backbone = (
        {f"{prefix}{k}" if prefix else k for k in model.base_model.state_dict()} if prefix else set(state)
    )
    out = {}
    for canon, s in own.items():
        name = by_stored[s]
        if canon in merged and name in backbone:
            shape = reader.tensors[merged[canon]].shape
            if tuple(shape) != tuple(state[name].shape):
                raise InputError(
                    f"{merged_dir}: tensor {merged[canon]!r} has shape {list(shape)}, the task model's "
                    f"{name!r} {list(state[name].shape)}: not the same backbone"
                )
            out[name] = merged[canon]
    if not out:
        raise InputError(f"{merged_dir}: none of its tensors is a backbone parameter of the task model")
    return out


def attach_backbone(loaded: Any, merged_dir: str | Path) -> int:
    """Load the merged backbone into ``loaded.model`` (in memory). Returns how many tensors."""
    reader = ModelReader("merged", merged_dir)
    try:
        sources = backbone_sources(loaded, reader)
        state = dict(loaded.model.state_dict())
        new = {name: reader.read(src, dtype=state[name].dtype) for name, src in sources.items()}
    finally:
        reader.close()
    loaded.model.load_state_dict(new, strict=False)
    return len(new)


def _grafted_copy(loaded: Any, task_dir: str | Path, merged_dir: str | Path, out: Path) -> tuple[Path, int]:
    return out, grafted(loaded, task_dir, merged_dir, out)


def grafted(loaded: Any, task_dir: str | Path, merged_dir: str | Path, out: Path) -> int:
    """Write the task model with the merged backbone to ``out`` (a model folder: one safetensors file written a
    tensor at a time, the task folder's other files copied), for a model too large to swap in memory.
    Returns how many tensors came from the merged checkpoint."""
    task, merged = ModelReader("task", task_dir), ModelReader("merged", merged_dir)
    try:
        stored = stored_names(loaded.model)
        from_merged = {stored[n]: src for n, src in backbone_sources(loaded, merged).items()}
        entries = []
        for name, info in task.tensors.items():
            reader, src = (merged, from_merged[name]) if name in from_merged else (task, name)
            dtype = ST_TO_TORCH[info.dtype]
            entries.append(Entry(name, tuple(info.shape), dtype, partial(reader.read, src, dtype=dtype)))
        out.mkdir(parents=True, exist_ok=True)
        save_streamed(entries, out / "model.safetensors", {})
    finally:
        task.close()
        merged.close()
    for f in Path(task_dir).iterdir():  # config, tokenizer, generation settings: not the weights
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".index.json", ".pt", ".pth")):
            shutil.copy2(f, out / f.name)
    return len(from_merged)


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
    max_memory: int | None = None,
    scratch: str | Path | None = None,
) -> dict[str, Any]:
    """Each task model scored as it is and with the merged backbone. A model whose float32 weights exceed
    ``max_memory`` is placed by accelerate (see ``load_model``), and its merged version is written to a
    temporary folder under ``scratch`` (its stored size of disk, checked first) and placed the same way instead
    of being swapped in memory. Under a launcher the processes share each task's examples (stats.parallel)."""
    group = process_group(device)
    with group.working():
        return _eval_tasks(merged, tasks, group, max_examples, batch_size, max_memory, scratch)


def _eval_tasks(
    merged: str | Path,
    tasks: list[tuple[str, str, str]],
    group: Group,
    max_examples: int | None,
    batch_size: int,
    max_memory: int | None,
    scratch: str | Path | None,
) -> dict[str, Any]:
    device, score = group.device, partial(evaluate, batch_size=batch_size, group=group)
    rows: dict[str, dict[str, Any]] = {}
    for name, model_dir, data_path in tasks:
        data = load_data(data_path).subset(max_examples)
        loaded = load_model(model_dir, device, max_memory=max_memory)
        check_fits(loaded, data, model_dir)
        own = score(loaded, data)
        placed = loaded.offloaded
        if placed:
            # one grafted copy for the machine when every process is on it (the first writes it), else each its own
            need, what = group.temporary_need(stored_bytes(model_dir), f"eval tasks ({name})")
            with scratch_folder("mergeflow-tasks-", need, scratch, what) as tmp:
                write = partial(_grafted_copy, loaded, model_dir, merged, tmp)
                path, n = group.made_once(write, f"eval tasks ({name})'s grafted copy")
                del loaded, write
                freed()
                loaded = load_model(path, device, max_memory=max_memory)
                got = score(loaded, data)  # ends with a collective: every process has read the copy
        else:
            n = attach_backbone(loaded, merged)
            got = score(loaded, data)
        metric, value = primary(got)
        base = primary(own)[1]
        norm = value / base if metric != "loss" and base > 0 else None
        rows[name] = {
            "model": str(model_dir),
            "data": str(data_path),
            "task": loaded.task,
            "examples": len(data),
            "tensors_attached": n,
            "placed": placed,
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
        "processes": group.size,
    }
