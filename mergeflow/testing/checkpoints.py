"""Sharded safetensors checkpoints of random tensors, by name and shape: the raw checkpoints the memory,
reliability and scale tests and the merge benchmarks read (``mergeflow.testing.models`` builds real
transformers models instead)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def write_checkpoint(
    path: str | Path,
    shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    shards: int | None = None,
    shard_bytes: int | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Normal(0, ``scale``) tensors of ``shapes`` (drawn in order from ``seed``) as ``model-*.safetensors`` with
    an index: ``shards`` files of equal tensor counts, or files of at most ``shard_bytes`` (one file when
    neither is given); ``config`` becomes config.json. Built in a fresh hidden folder beside ``path`` and
    renamed into place, so an interrupted build leaves nothing at ``path`` and nothing that existed is touched;
    an existing ``path`` is an error."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh folder: never one that existed before
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    gen = torch.Generator().manual_seed(seed)
    names = list(shapes)
    width = torch.empty((), dtype=dtype).element_size()
    groups: list[list[str]] = [[]]
    if shards is not None:
        per = -(-len(names) // shards)
        groups = [names[s * per : (s + 1) * per] for s in range(shards)]
    else:
        size = 0
        for name in names:
            nbytes = torch.Size(shapes[name]).numel() * width
            if shard_bytes is not None and size + nbytes > shard_bytes and groups[-1]:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
    weight_map = {}
    for i, group in enumerate(groups):  # one shard in memory at a time
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=gen) * scale).to(dtype) for n in group}
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(torch.Size(s).numel() for s in shapes.values()) * width
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(path)
    return path


def llama_shapes(dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Llama-shaped model with config ``dims`` (hidden, intermediate, vocab, layers, heads)."""
    h, f, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    kv = dims["num_key_value_heads"] * (h // dims["num_attention_heads"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(dims["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        for n, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            shapes[p + f"self_attn.{n}.weight"] = (rows, h)
        shapes.update(
            {
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            }
        )
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    return shapes
