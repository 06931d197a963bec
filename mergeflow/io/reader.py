"""Lazy reader over a Hugging Face model directory or a single checkpoint file.

Only headers are read up front. A tensor is read when asked for, through safetensors'
``safe_open``. safe_open maps the file into memory, and every page touched while a handle
is open counts toward the process's resident memory; so each handle is closed again after a
bounded number of bytes has been read through it, which keeps resident memory proportional
to the tensors in flight rather than to the shard size.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mergeflow.errors import MissingTensor, ModelError
from mergeflow.files import read_text_capped
from mergeflow.io.dtypes import TORCH_TO_ST
from mergeflow.io.header import TensorInfo, header_digest, read_header

RECYCLE_BYTES = 64 * 1024 * 1024

MAX_JSON = 64 << 20  # config and index files; real ones are kilobytes


def trusted_root(directory: Path) -> Path:
    """Where the files of a model directory may really live: the directory itself or, for a snapshot
    in the Hugging Face cache (``models--ORG--NAME/snapshots/REV``, whose files are links into
    ``../../blobs``), that cache repository's folder."""
    d = directory.resolve()
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
        return d.parent.parent
    return d


def is_inside(directory: Path, path: Path) -> bool:
    """Whether ``path`` (links followed) is a file under :func:`trusted_root` of ``directory``."""
    try:
        return trusted_root(directory) in path.resolve(strict=True).parents
    except (OSError, RuntimeError):
        return False


def _inside(directory: Path, name: str, what: str) -> Path:
    """``directory / name``, refusing names that leave the directory (``../``, absolute, symlinks out)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or "\\" in name:
        raise ModelError(f"{directory}: {what} names an invalid file {name!r}")
    p = directory / name
    if not os.path.exists(p):
        raise ModelError(f"{directory}: {what} names a missing file {name!r}")
    if not is_inside(directory, p):
        raise ModelError(f"{directory}: {what} names {name!r}, which lies outside the model directory")
    return p


class ModelReader:
    """Tensor names -> lazily read tensors, for one model."""

    def __init__(
        self, name: str, path: str | Path, allow_pickle: bool = False, recycle_bytes: int = RECYCLE_BYTES
    ) -> None:
        self.name, self.path = name, Path(path)
        self.recycle_bytes = recycle_bytes
        self.config: dict[str, Any] | None = None
        self.tensors: dict[str, TensorInfo] = {}
        self._pickled: dict[str, torch.Tensor] = {}
        self.extra_files: list[str] = []  # files read besides the tensors' own (a LoRA adapter's)
        self.source = str(self.path)  # how the model card names it (a repo id @ commit, a path)
        self._handles: dict[str, list[Any]] = {}  # file -> [handle, bytes read through it]
        self._lock = threading.Lock()
        self._discover(allow_pickle)

    # ---------------------------------------------------------------- discovery
    def _discover(self, allow_pickle: bool) -> None:
        p = self.path
        if p.is_file():
            self._from_file(p, allow_pickle)
            return
        if not p.is_dir():
            raise ModelError(f"model '{self.name}': {p} does not exist")
        cfg = p / "config.json"
        if cfg.is_file():
            cfg = _inside(p, "config.json", "the model directory")
            try:
                config = json.loads(read_text_capped(cfg, f"model '{self.name}':", MAX_JSON))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelError(f"model '{self.name}': {cfg}: invalid JSON: {exc}") from None
            if not isinstance(config, dict):
                raise ModelError(f"model '{self.name}': {cfg}: not a JSON object")
            self.config = config
        if (p / "model.safetensors.index.json").is_file():
            self._from_index(p, "model.safetensors.index.json", self._add_safetensors)
        elif (p / "model.safetensors").is_file():
            self._add_safetensors(_inside(p, "model.safetensors", "the model directory"))
        elif (p / "pytorch_model.bin.index.json").is_file() or (p / "pytorch_model.bin").is_file():
            if not allow_pickle:
                self._refuse_pickle(p)
            if (p / "pytorch_model.bin.index.json").is_file():
                self._from_index(p, "pytorch_model.bin.index.json", self._add_pickle)
            else:
                self._add_pickle(_inside(p, "pytorch_model.bin", "the model directory"))
        else:
            raise ModelError(
                f"model '{self.name}': no model.safetensors or model.safetensors.index.json in {p}"
            )

    def _refuse_pickle(self, p: Path) -> None:
        raise ModelError(
            f"model '{self.name}': {p} holds only pickle weights (pytorch_model.bin), which can run "
            "code when loaded; convert them to safetensors, or pass --allow-pickle to load them "
            "with torch.load(weights_only=True)"
        )

    def _from_file(self, p: Path, allow_pickle: bool) -> None:
        if p.suffix == ".safetensors":
            self._add_safetensors(p)
        elif p.suffix in (".bin", ".pt", ".pth"):
            if not allow_pickle:
                self._refuse_pickle(p)
            self._add_pickle(p)
        else:
            raise ModelError(f"model '{self.name}': {p} is not a .safetensors file")

    def _from_index(self, d: Path, index_name: str, add: Any) -> None:
        index = d / index_name
        try:
            data = json.loads(read_text_capped(index, f"model '{self.name}':", MAX_JSON))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise TypeError("weight_map must map tensor names to file names")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelError(f"model '{self.name}': {index}: invalid index ({exc})") from None
        files: dict[str, Path] = {}
        for fname in sorted(set(weight_map.values()), key=str):
            files[fname] = _inside(d, fname, index_name)
        for path in files.values():
            add(path)
        for tensor, fname in weight_map.items():
            info = self.tensors.get(tensor)
            if info is None or Path(info.file) != files[fname]:
                raise ModelError(f"model '{self.name}': {index} maps {tensor!r} to {fname}, which lacks it")

    def _add_safetensors(self, path: Path) -> None:
        infos, _meta = read_header(path)
        for n, info in sorted(infos.items(), key=lambda kv: kv[1].begin):
            if n in self.tensors:
                raise ModelError(f"model '{self.name}': tensor {n!r} is stored twice ({path})")
            self.tensors[n] = info

    def _add_pickle(self, path: Path) -> None:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many kinds here; the message is what matters
            raise ModelError(
                f"model '{self.name}': cannot load {path} with weights_only=True: {str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(sd, dict):
            raise ModelError(f"model '{self.name}': {path} does not hold a state dict")
        for n, t in sd.items():
            if not isinstance(t, torch.Tensor) or t.dtype not in TORCH_TO_ST:
                continue
            self._pickled[n] = t
            self.tensors[n] = TensorInfo(
                n, TORCH_TO_ST[t.dtype], tuple(t.shape), str(path), 0, t.numel() * t.element_size()
            )

    # ---------------------------------------------------------------- reading
    def info(self, tensor: str) -> TensorInfo:
        try:
            return self.tensors[tensor]
        except KeyError:
            raise MissingTensor(f"model '{self.name}' ({self.path}) has no tensor {tensor!r}") from None

    def advise(self, tensor: str) -> None:
        """Ask the kernel to start reading ``tensor``'s bytes into the page cache (asynchronous: no thread and
        no memory of this process; the pages are the kernel's to drop). A no-op for pickled checkpoints, where
        posix_fadvise is missing, or when the file cannot be opened (e.g. still downloading)."""
        if tensor in self._pickled or not hasattr(os, "posix_fadvise"):
            return
        info = self.info(tensor)
        try:
            fd = os.open(info.file, os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, info.begin, info.nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def read(
        self,
        tensor: str,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """A fresh tensor (never a view of the file), optionally only rows [start, stop) of dim 0."""
        info = self.info(tensor)
        with self._lock:
            if tensor in self._pickled:
                src = self._pickled[tensor]
                src = src if rows is None else src[rows[0] : rows[1]]
            else:
                handle = self._handle(info.file)
                try:
                    src = (
                        handle.get_tensor(tensor)
                        if rows is None
                        else handle.get_slice(tensor)[rows[0] : rows[1]]
                    )
                except Exception as exc:
                    raise ModelError(
                        f"model '{self.name}': cannot read {tensor!r} from {info.file}: {exc}"
                    ) from None
            out = src.to(device=device, dtype=dtype or src.dtype, copy=True)
            del src
            self._account(info.file, out.numel() * info.nbytes // max(info.numel, 1))
        return out

    def _handle(self, file: str) -> Any:
        entry = self._handles.get(file)
        if entry is None:
            try:
                entry = self._handles[file] = [safe_open(file, framework="pt", device="cpu"), 0]
            except Exception as exc:
                raise ModelError(f"model '{self.name}': cannot open {file}: {exc}") from None
        return entry[0]

    def _account(self, file: str, nbytes: int) -> None:
        entry = self._handles.get(file)
        if entry is not None:
            entry[1] += nbytes
            if entry[1] >= self.recycle_bytes:
                del self._handles[file]  # unmaps the file: its touched pages leave our resident set

    def close(self) -> None:
        with self._lock:
            self._handles.clear()

    def file_identity(self, file: str) -> str:
        """What must not change about one of the model's files for ``--resume`` to trust it: size and mtime
        survive `cp -p` / `rsync -a` over the file; inode, ctime (which no user can set) and the header bytes
        (tensor names, shapes, offsets and metadata) do not."""
        st = os.stat(file)
        return f"{file}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}:{header_digest(file)}"

    @property
    def model_type(self) -> str | None:
        mt = (self.config or {}).get("model_type")
        return mt if isinstance(mt, str) else None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
