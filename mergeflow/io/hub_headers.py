"""A Hub model known only from what is small: its ``config.json`` and its safetensors headers, read
by HTTP range requests (``huggingface_hub``'s ``get_safetensors_metadata``). Enough to check and plan
a merge (names, shapes, dtypes, layers, alignment) before any weight byte is downloaded; reading a
tensor from it is an error by design."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mergeflow.errors import ModelError
from mergeflow.io.header import TensorInfo
from mergeflow.io.hub import client_options, hub_cache, hub_errors
from mergeflow.io.names import CONFIG_FILES, TOKENIZER_FILES
from mergeflow.io.reader import ModelReader

SMALL = [*CONFIG_FILES, *TOKENIZER_FILES]


class HubHeaderReader(ModelReader):
    def __init__(self, name: str, repo: str, revision: str | None) -> None:
        self.repo, self.revision = repo, revision
        super().__init__(name, repo)

    def _discover(self, allow_pickle: bool) -> None:
        from huggingface_hub import HfApi, snapshot_download

        opts = client_options()
        with hub_errors(f"model '{self.name}'", self.repo, self.revision):
            # the small files (config, tokenizer: vocabularies of different sizes are planned from them) into
            # the cache, where the run will find them; the weights are known from their headers only
            self.path = Path(snapshot_download(self.repo, revision=self.revision, allow_patterns=SMALL,
                                               cache_dir=str(hub_cache()), **opts))
            meta = HfApi(**opts).get_safetensors_metadata(self.repo, revision=self.revision)
        if (self.path / "config.json").is_file():
            self.config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        for fname, fmeta in meta.files_metadata.items():
            for tname, t in fmeta.tensors.items():
                begin, end = t.data_offsets
                self.tensors[tname] = TensorInfo(tname, t.dtype, tuple(t.shape), f"{self.repo}/{fname}", begin, end)

    @property
    def missing_bytes(self) -> int:
        """Weight bytes of the shards not yet in the cache's snapshot (what fetching it would download)."""
        return sum(t.nbytes for t in self.tensors.values() if not (self.path / t.file.split("/", 2)[-1]).is_file())

    def read(self, tensor: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
             rows: tuple[int, int] | None = None) -> torch.Tensor:
        raise ModelError(f"model '{self.name}': {self.repo} is known from its headers only (pre-flight)")
