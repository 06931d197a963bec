"""A base model with a PEFT LoRA adapter applied, read tensor by tensor.

A LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) changes a target weight W
(out, in) to W + s * B @ A with A (r, in), B (out, r) and s = alpha / r, or alpha / sqrt(r) with
rsLoRA; r and alpha may differ per module (``rank_pattern``, ``alpha_pattern``). Embedding adapters
store A (r, vocab) and B (dim, r): the weight (vocab, dim) gets s * (B @ A)^T. With
``fan_in_fan_out`` (GPT-2's Conv1D stores W as (in, out)) the update is transposed too. Tensors the
adapter stores whole (``modules_to_save``, or a module's ``base_layer.weight``) replace the base's.

Nothing is merged ahead: :class:`LoraReader` reads the base tensor (or only the rows asked for) and
adds the update for those rows, so a 70B base with an adapter streams like the base alone. Variants
that cannot be applied this way exactly (DoRA, LoRA biases, other PEFT types) are refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import ModelError
from mergeflow.files import read_text_capped
from mergeflow.io.dtypes import ST_TO_TORCH
from mergeflow.io.header import TensorInfo
from mergeflow.io.reader import ModelReader

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class Update:
    a: str  # adapter tensor names
    b: str
    scale: float
    transposed: bool  # the update is (B @ A)^T: embeddings, and fan_in_fan_out weights


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module patterns: a key matches a module whose dotted name ends with it (a regex)."""
    from mergeflow.patterns import PatternError, compile_regex

    for key, value in patterns.items():
        try:
            if compile_regex(rf"(^|\.)(?:{key})$")(module):
                return value
        except PatternError:
            continue
    return default


def read_adapter(adapter: Path, who: str) -> tuple[dict[str, Any], ModelReader]:
    """(adapter_config.json, a reader of its weights), refusing what cannot be applied exactly."""
    if not (adapter / CONFIG).is_file():
        raise ModelError(f"{who}: {adapter} is not a PEFT adapter (no {CONFIG})")
    try:
        cfg = json.loads(read_text_capped(adapter / CONFIG, f"{who}:", 1 << 20))
    except ValueError as exc:
        raise ModelError(f"{who}: {adapter / CONFIG}: invalid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{who}: {adapter / CONFIG} is not a JSON object")
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise ModelError(f"{who}: {adapter} is a {kind} adapter; only LoRA adapters can be applied")
    for key, what in (("use_dora", "DoRA (weight-decomposed LoRA)"), ("lora_bias", "LoRA with biases")):
        if cfg.get(key):
            raise ModelError(
                f"{who}: {adapter} uses {what}, which mergeflow does not apply; merge it with "
                "peft's merge_and_unload first"
            )
    if not (adapter / WEIGHTS).is_file():
        raise ModelError(f"{who}: {adapter} has no {WEIGHTS} (pickled adapters are not read)")
    return cfg, ModelReader(f"{who} adapter", adapter / WEIGHTS)


class LoraReader(ModelReader):
    """The tensors of a base model's reader as ``adapter`` changes them (same interface as ModelReader).
    ``base``: a reader (a folder's, a Hub model's that fetches shards as they are read), or a path."""

    def __init__(
        self, name: str, base: ModelReader | str | Path, adapter: str | Path, allow_pickle: bool = False
    ) -> None:
        self.base = (
            base if isinstance(base, ModelReader) else ModelReader(name, base, allow_pickle=allow_pickle)
        )
        super().__init__(name, self.base.path)
        self.source = self.base.source
        self.adapter_path = Path(adapter)
        cfg, self.adapter = read_adapter(self.adapter_path, f"model '{name}'")
        self.updates: dict[str, Update] = {}
        self.replaced: dict[str, str] = {}
        self._plan(cfg)
        self.extra_files = [str(self.adapter_path / CONFIG), str(self.adapter_path / WEIGHTS)]

    def _discover(self, allow_pickle: bool) -> None:
        self.config = self.base.config

    @property  # type: ignore[override]
    def tensors(self) -> dict[str, TensorInfo]:
        """The base's tensors (as they are now: a Hub model's shards may move to a run's folder), with the
        ones the adapter stores whole in their place."""
        return {**self.base.tensors, **self._own}

    @tensors.setter
    def tensors(self, value: dict[str, TensorInfo]) -> None:
        self._own = dict(value)

    def info(self, tensor: str) -> TensorInfo:
        own = self._own.get(tensor)
        return own if own is not None else self.base.info(tensor)

    def file_identity(self, file: str) -> str:
        ours = any(t.file == file for t in self._own.values()) or file in self.extra_files
        return super().file_identity(file) if ours else self.base.file_identity(file)

    def _plan(self, cfg: dict[str, Any]) -> None:
        names = list(self.adapter.tensors)
        for key in names:
            if not key.startswith(PREFIX):
                raise ModelError(
                    f"model '{self.name}': adapter tensor {key!r} does not start with {PREFIX!r}"
                )
            rest = key[len(PREFIX) :]
            if ".lora_magnitude_vector" in rest:
                raise ModelError(
                    f"model '{self.name}': the adapter holds DoRA magnitudes ({key}); not applied"
                )
            if rest.endswith((".lora_A.weight", ".lora_embedding_A")):
                embed = rest.endswith(".lora_embedding_A")
                module = rest.rsplit(".lora_", 1)[0]
                b_key = key.replace(".lora_A.weight", ".lora_B.weight").replace(
                    "lora_embedding_A", "lora_embedding_B"
                )
                if b_key not in self.adapter.tensors:
                    raise ModelError(f"model '{self.name}': adapter has {key} but no {b_key}")
                r = self.adapter.info(key).shape[0]
                alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", r))
                scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
                self._target(module + ".weight", key)
                self.updates[module + ".weight"] = Update(
                    key, b_key, float(scale), embed or bool(cfg.get("fan_in_fan_out"))
                )
            elif ".lora_B" in rest or rest.endswith(".lora_embedding_B"):
                continue  # taken with its A
            elif ".lora_" in rest:
                raise ModelError(
                    f"model '{self.name}': adapter tensor {key!r} is of a LoRA variant mergeflow does "
                    "not apply"
                )
            else:  # stored whole: modules_to_save, or a module's base weights
                target = rest.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                self._target(target, key)
                self.replaced[target] = key
                self._own[target] = self.adapter.info(key)

    def _target(self, tensor: str, key: str) -> None:
        if tensor not in self.tensors:
            raise ModelError(
                f"model '{self.name}': adapter tensor {key!r} targets {tensor!r}, which the base "
                f"model {self.path} lacks (an adapter of another model?)"
            )

    def read(
        self,
        tensor: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        up = self.updates.get(tensor)
        want = torch.float32 if up is not None else dtype  # updates are added in float32, then cast once
        if tensor in self.replaced:
            w = self.adapter.read(self.replaced[tensor], dtype=want, device=device, rows=rows)
        else:
            w = self.base.read(tensor, dtype=want, device=device, rows=rows)
        if up is None:
            return w
        a = self.adapter.read(up.a, dtype=torch.float32, device=device)  # (r, in) or (r, vocab)
        b = self.adapter.read(up.b, dtype=torch.float32, device=device)  # (out, r) or (dim, r)
        if up.transposed:  # W rows run along A's columns: W[rows] += s * (B @ A[:, rows])^T
            a = a if rows is None else a[:, rows[0] : rows[1]]
            delta = (b @ a).T
        else:  # W rows run along B's rows
            delta = (b if rows is None else b[rows[0] : rows[1]]) @ a
        if delta.shape != w.shape:
            raise ModelError(
                f"model '{self.name}': the adapter's update of {tensor!r} has shape "
                f"{list(delta.shape)}, the weight {list(w.shape)}"
            )
        out = w.add_(delta, alpha=up.scale)
        return out.to(dtype if dtype is not None else ST_TO_TORCH[self.info(tensor).dtype])

    def close(self) -> None:
        self.base.close()
        self.adapter.close()
