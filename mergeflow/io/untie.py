"""A tied model seen untied: its output head (``lm_head.weight``, stored only as the input embeddings) as a
tensor of its own, and a config that says so. Alignment that folds the final norm's scale into the head (an
orthogonal map of the residual stream) needs the two apart; the merged output is then written untied, one
vocabulary x hidden matrix larger. The files are not touched: the head is read from the embeddings."""

from __future__ import annotations

import dataclasses
from collections import ChainMap
from collections.abc import Mapping

import torch

from mergeflow.io.header import TensorInfo
from mergeflow.io.reader import ModelReader

HEAD = "lm_head.weight"


class UntiedReader(ModelReader):
    """``base``'s tensors plus ``head``, a copy of ``embed`` on every read."""

    def __init__(self, base: ModelReader, embed: str, head: str = HEAD) -> None:
        self.base, self.embed, self.head = base, embed, head
        super().__init__(base.name, base.path)
        self.source = base.source
        self.extra_files = base.extra_files

    def _discover(self, allow_pickle: bool) -> None:
        self.config = {**(self.base.config or {}), "tie_word_embeddings": False}

    @property  # type: ignore[override]
    def tensors(self) -> Mapping[str, TensorInfo]:  # type: ignore[override]
        """The base's table (as it is now: a Hub model's shards may move) and the head: a view, not a copy,
        since the plan looks tensors up one by one."""
        return ChainMap(
            {self.head: dataclasses.replace(self.base.info(self.embed), name=self.head)}, self.base.tensors
        )  # type: ignore[arg-type]

    @tensors.setter
    def tensors(self, value: dict[str, TensorInfo]) -> None:
        pass  # the base's, always

    @property  # type: ignore[override]
    def recycle_bytes(self) -> int:
        return self.base.recycle_bytes

    @recycle_bytes.setter
    def recycle_bytes(self, value: int) -> None:
        if hasattr(self, "base"):
            self.base.recycle_bytes = value

    def info(self, tensor: str) -> TensorInfo:
        return self.tensors[self.head] if tensor == self.head else self.base.info(tensor)

    def read(
        self,
        tensor: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        return self.base.read(
            self.embed if tensor == self.head else tensor, dtype=dtype, device=device, rows=rows
        )

    def file_identity(self, file: str) -> str:
        return self.base.file_identity(file)

    def close(self) -> None:
        self.base.close()


def tied_head(reader: ModelReader, embed_names: list[str]) -> str | None:
    """The input embedding a causal LM's missing head is tied to, or None (not tied, or not a causal LM)."""
    cfg = reader.config or {}
    arch = (cfg.get("architectures") or [""])[0]
    if (
        HEAD in reader.tensors
        or not cfg.get("tie_word_embeddings", True)
        or not str(arch).endswith(("ForCausalLM", "LMHeadModel"))
    ):
        return None
    found = [n for n in embed_names if n in reader.tensors]
    return found[0] if len(found) == 1 else None
