"""Evaluation/statistics data: a text file (one example per line), JSONL with ``text`` (and optional
``label``), or ``.npz`` with ``x`` (and optional ``y``) for vision and other tensor inputs. Every
problem is an InputError naming the file (and line)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergeflow.errors import InputError
from mergeflow.files import check_regular, read_text_capped

MAX_TEXT = 1 << 30  # text and JSONL data files: held in memory whole


class DataError(InputError):
    pass


@dataclass
class Data:
    path: Path
    texts: list[str] | None = None
    x: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.x)  # type: ignore[arg-type]

    def subset(self, n: int | None) -> Data:
        if n is None or n >= len(self):
            return self
        return Data(self.path, None if self.texts is None else self.texts[:n], None if self.x is None else self.x[:n],
                    None if self.labels is None else self.labels[:n])


def load_data(path: str | Path) -> Data:
    p = Path(path)
    try:
        check_regular(p, "data file")
        if p.suffix == ".npz":
            return _npz(p)
        lines = read_text_capped(p, "data file", MAX_TEXT).splitlines()
    except DataError:
        raise
    except InputError as exc:
        raise DataError(str(exc)) from None
    if p.suffix == ".jsonl":
        return _jsonl(p, lines)
    texts = [ln for ln in lines if ln.strip()]
    if not texts:
        raise DataError(f"{p}: no examples (the file has no non-empty line)")
    return Data(p, texts=texts)


def _jsonl(p: Path, lines: list[str]) -> Data:
    texts, labels = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{i}: invalid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{p}:{i}: each line must be an object with a string 'text'")
        if "label" in rec and not (isinstance(rec["label"], int) and not isinstance(rec["label"], bool)):
            raise DataError(f"{p}:{i}: 'label' must be an integer")
        if "label" in rec and not 0 <= rec["label"] < 2**31:
            raise DataError(f"{p}:{i}: 'label' {rec['label']} is out of range (class indices are 0 or more, "
                            "below 2**31)")
        texts.append(rec["text"])
        labels.append(rec.get("label"))
    if not texts:
        raise DataError(f"{p}: no examples")
    if any(lb is None for lb in labels) and any(lb is not None for lb in labels):
        raise DataError(f"{p}: some lines have a 'label' and others not")
    return Data(p, texts=texts, labels=None if labels[0] is None else np.asarray(labels, dtype=np.int64))


def _npz(p: Path) -> Data:
    import zipfile

    try:
        with np.load(p, allow_pickle=False) as f:
            _check_npz_sizes(p, f.zip)
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{p}: not a readable .npz ({exc or type(exc).__name__})") from None
    if "x" not in arrays:
        raise DataError(f"{p}: no array 'x' (found: {', '.join(arrays) or 'none'})")
    x = arrays["x"]
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise DataError(f"{p}: 'x' must be a non-empty numeric array with a batch axis, got {x.dtype} {x.shape}")
    y = arrays.get("y")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),)):
        raise DataError(f"{p}: 'y' must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    x = x.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise DataError(f"{p}: example {int(bad[0])} of 'x' has NaN or Inf ({len(bad)} example(s) in all)")
    return Data(p, x=x, labels=None if y is None else y.astype(np.int64))


def _check_npz_sizes(p: Path, archive: Any) -> None:
    """Read each array's declared shape from its header before loading it: a header may declare
    terabytes (a zip holds them in a few bytes), which must be refused, not allocated."""
    import psutil

    room = psutil.virtual_memory().available // 2
    for info in archive.infolist():
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(fh)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > room:
            raise DataError(f"{p}: array {info.filename.removesuffix('.npy')!r} declares shape {tuple(shape)} "
                            f"({nbytes / 2**30:.3g} GiB), more than half the memory available "
                            f"({room / 2**30:.3g} GiB); use a smaller data file or --max-examples")


def check_labels(data: Data, num_labels: int | None) -> None:
    if data.labels is None or num_labels is None:
        return
    bad = np.flatnonzero((data.labels < 0) | (data.labels >= num_labels))
    if len(bad):
        raise DataError(f"{data.path}: label {int(data.labels[bad[0]])} of example {int(bad[0])} is out of range "
                        f"for a model with {num_labels} labels")


def batches(data: Data, tokenizer: Any, batch_size: int, max_length: int, device: torch.device,
            image_shape: tuple[int, ...] | None = None):
    """Yield (model inputs, labels or None, token mask or None) per batch."""
    for s in range(0, len(data), batch_size):
        labels = None if data.labels is None else torch.as_tensor(data.labels[s:s + batch_size], device=device)
        if data.texts is not None:
            if tokenizer is None:
                raise DataError(f"{data.path}: text data needs a tokenizer in the model directory")
            enc = tokenizer(data.texts[s:s + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
            yield inputs, labels, inputs.get("attention_mask")
        else:
            x = torch.as_tensor(data.x[s:s + batch_size], device=device)  # type: ignore[index]
            if image_shape is not None:
                if x.ndim == 3:  # (N, H, W): one channel, repeated to the model's channels
                    x = x.unsqueeze(1).expand(-1, image_shape[0], -1, -1)
                if tuple(x.shape[1:]) != tuple(image_shape):
                    raise DataError(f"{data.path}: images of shape {tuple(x.shape[1:])}, the model expects "
                                    f"{tuple(image_shape)}")
                yield {"pixel_values": x.contiguous()}, labels, None
            else:
                yield {"inputs_embeds": x}, labels, None
