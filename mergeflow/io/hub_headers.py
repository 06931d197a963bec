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
from mergeflow.io.reader import ModelReader


class HubHeaderReader(ModelReader):
    def __init__(self, name: str, repo: str, revision: str | None) -> None:
        self.repo, self.revision = repo, revision
        super().__init__(name, repo)

    def _discover(self, allow_pickle: bool) -> None:
        from huggingface_hub import HfApi, hf_hub_download

        opts = client_options()
        with hub_errors(f"model '{self.name}'", self.repo, self.revision):
            cfg = hf_hub_download(self.repo, "config.json", revision=self.revision, cache_dir=str(hub_cache()), **opts)
            self.config = json.loads(Path(cfg).read_text(encoding="utf-8"))
            meta = HfApi(**opts).get_safetensors_metadata(self.repo, revision=self.revision)
        for fname, fmeta in meta.files_metadata.items():
            for tname, t in fmeta.tensors.items():
                begin, end = t.data_offsets
                self.tensors[tname] = TensorInfo(tname, t.dtype, tuple(t.shape), f"{self.repo}/{fname}", begin, end)

    def read(self, tensor: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
             rows: tuple[int, int] | None = None) -> torch.Tensor:
        raise ModelError(f"model '{self.name}': {self.repo} is known from its headers only (pre-flight)")
