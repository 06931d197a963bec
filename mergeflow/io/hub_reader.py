"""A model by Hugging Face repo id, known first from what is small and read shard by shard.

Opening it fetches only the small files into the cache (config, generation config, tokenizer files,
the safetensors index) and learns every tensor's name, dtype and shape from the safetensors headers
by HTTP range requests. That is enough to check and plan a merge (pre-flight) before any weight byte
is downloaded. A shard is fetched when the merge first needs it: by a :class:`~mergeflow.io.fetcher.Fetcher`
that downloads the shards in the order the plan reads them, in the background, or else here, on
demand. Once a shard is on disk its header is read again and checked against what the Hub announced.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import ModelError
from mergeflow.files import read_text_capped
from mergeflow.io.header import TensorInfo, read_header
from mergeflow.io.hub import NEEDED, client_options, hub_cache, hub_errors
from mergeflow.io.names import INDEX_NAME
from mergeflow.io.reader import MAX_JSON, ModelReader

SMALL = [p for p in NEEDED if not p.endswith(".safetensors")]  # config, tokenizer, index, module configs


class NoSafetensors(ModelError):
    """The repository holds no safetensors weights (``.bin`` ones may be read with --allow-pickle)."""


class HubReader(ModelReader):
    def __init__(
        self,
        name: str,
        repo: str,
        revision: str | None,
        subfolder: str | None = None,
        headers_only: bool = True,
    ) -> None:
        self.repo, self.revision, self.subfolder = repo, revision, (subfolder or "").strip("/")
        self.headers_only = headers_only  # reading a tensor is refused (pre-flight) until a run clears this
        self.fetcher: Any = None  # a Fetcher that brings shards in plan order, when a run starts one
        self.sizes: dict[str, int] = {}  # repo path -> bytes, for every file of the revision
        self.repo_file: dict[str, str] = {}  # local path of a shard -> its path in the repo
        self._checked: set[str] = set()  # shards on disk whose header was compared with the announced one
        self._fetch_lock = threading.Lock()
        super().__init__(name, repo)

    @property
    def who(self) -> str:
        return f"model '{self.name}'"

    def _in_repo(self, name: str) -> str:
        return f"{self.subfolder}/{name}" if self.subfolder else name

    def _discover(self, allow_pickle: bool) -> None:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.hf_api import RepoFile

        opts = client_options()
        with hub_errors(self.who, self.repo, self.revision):
            snap = Path(
                snapshot_download(
                    self.repo,
                    revision=self.revision,
                    cache_dir=str(hub_cache()),
                    allow_patterns=[self._in_repo(n) for n in SMALL],
                    **opts,
                )
            )
            self.commit = snap.name  # every later request names this commit: the files cannot change under us
            api = HfApi(**opts)
            entries = api.list_repo_tree(
                self.repo, path_in_repo=self.subfolder or None, recursive=True, revision=self.commit
            )
            self.sizes = {e.path: e.size for e in entries if isinstance(e, RepoFile)}
            self.snapshot, self.path = snap, snap / self.subfolder if self.subfolder else snap
            shards = self._shards()
            for shard in shards:
                meta = api.parse_safetensors_file_metadata(self.repo, shard, revision=self.commit)
                local = str(self.snapshot / shard)
                self.repo_file[local] = shard
                for tname, t in sorted(meta.tensors.items(), key=lambda kv: kv[1].data_offsets[0]):
                    if tname in self.tensors:
                        raise ModelError(
                            f"{self.who}: tensor {tname!r} is stored twice ({self.repo}/{shard})"
                        )
                    begin, end = t.data_offsets
                    self.tensors[tname] = TensorInfo(tname, t.dtype, tuple(t.shape), local, begin, end)
        if (self.path / "config.json").is_file():
            self.config = json.loads(read_text_capped(self.path / "config.json", f"{self.who}:", MAX_JSON))
        self.source = f"{self.repo}@{self.commit}" + (f" ({self.subfolder})" if self.subfolder else "")

    def _shards(self) -> list[str]:
        index = self.path / INDEX_NAME
        if index.is_file():
            try:
                names = set(
                    json.loads(read_text_capped(index, f"{self.who}:", MAX_JSON))["weight_map"].values()
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelError(
                    f"{self.who}: {self.repo}/{self._in_repo(INDEX_NAME)}: invalid index ({exc})"
                ) from None
            bad = [n for n in names if not isinstance(n, str) or "/" in n or n.startswith(".")]
            if bad:
                raise ModelError(
                    f"{self.who}: {self.repo}/{self._in_repo(INDEX_NAME)} names invalid files {bad[:3]}"
                )
            missing = [n for n in sorted(names) if self._in_repo(n) not in self.sizes]
            if missing:
                raise ModelError(
                    f"{self.who}: {self.repo}@{self.commit} lacks {missing[0]}, which its index names"
                )
            return [self._in_repo(n) for n in sorted(names)]
        if self._in_repo("model.safetensors") in self.sizes:
            return [self._in_repo("model.safetensors")]
        if any(f.endswith((".bin", ".pt", ".pth")) for f in self.sizes):
            raise NoSafetensors(
                f"{self.who}: {self.repo}@{self.commit} holds only pickle weights "
                "(pytorch_model.bin), which can run code when loaded; pass --allow-pickle to "
                "download and load them with torch.load(weights_only=True)"
            )
        raise ModelError(
            f"{self.who}: {self.repo}@{self.commit} has no model.safetensors or "
            f"{INDEX_NAME}" + (f" in {self.subfolder}/" if self.subfolder else "")
        )

    # ---------------------------------------------------------------- shards on disk
    def shard_size(self, file: str) -> int:
        return self.sizes.get(self.repo_file.get(file, ""), 0)

    def missing(self, file: str) -> bool:
        """Whether the shard (a local path of this reader) is not on disk yet."""
        return file not in self._checked and not Path(file).is_file()

    def relocate(self, moves: dict[str, str]) -> None:
        """Shards that will be downloaded elsewhere (a run's private folder): old local path -> new."""
        for old, new in moves.items():
            self.repo_file[new] = self.repo_file.pop(old)
        for n, t in list(self.tensors.items()):
            if t.file in moves:
                self.tensors[n] = TensorInfo(t.name, t.dtype, t.shape, moves[t.file], t.begin, t.end)

    def ensure(self, file: str) -> None:
        """Have the shard on disk, its header as announced: wait for the fetcher, or download it now."""
        if file in self._checked:
            return
        if self.headers_only:
            raise ModelError(f"{self.who}: {self.repo} is known from its headers only (pre-flight)")
        if self.fetcher is not None and self.fetcher.has(self, file):
            self.fetcher.wait(self, file)  # outside the lock: other shards of this model stay readable
        with self._fetch_lock:
            if file in self._checked:
                return
            if not Path(file).is_file():
                from huggingface_hub import hf_hub_download

                with hub_errors(self.who, self.repo, self.commit):
                    hf_hub_download(
                        self.repo,
                        self.repo_file[file],
                        revision=self.commit,
                        cache_dir=str(hub_cache()),
                        **client_options(),
                    )
            self._check_header(file)
            self._checked.add(file)

    def _check_header(self, file: str) -> None:
        infos, _meta = read_header(file)
        announced = {n: (t.dtype, t.shape) for n, t in self.tensors.items() if t.file == file}
        if announced != {n: (t.dtype, t.shape) for n, t in infos.items()}:
            raise ModelError(
                f"{self.who}: {self.repo}/{self.repo_file[file]} on disk differs from the header "
                "the Hub announced; delete it from the cache and run again"
            )

    def forget(self, file: str) -> None:
        """Close the shard's mapping (it is about to be deleted)."""
        with self._lock:
            self._handles.pop(file, None)
        self._checked.discard(file)

    def read(
        self,
        tensor: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        self.ensure(self.info(tensor).file)
        return super().read(tensor, dtype=dtype, device=device, rows=rows)

    def file_identity(self, file: str) -> str:
        return f"{self.repo}@{self.commit}/{self.repo_file.get(file, Path(file).name)}"
