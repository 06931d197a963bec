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
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    if p.suffix == ".npz":
        return _npz(p)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc})") from None
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
        texts.append(rec["text"])
        labels.append(rec.get("label"))
    if not texts:
        raise DataError(f"{p}: no examples")
    if any(lb is None for lb in labels) and any(lb is not None for lb in labels):
        raise DataError(f"{p}: some lines have a 'label' and others not")
    return Data(p, texts=texts, labels=None if labels[0] is None else np.asarray(labels, dtype=np.int64))


def _npz(p: Path) -> Data:
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable .npz ({exc})") from None
    if "x" not in arrays:
        raise DataError(f"{p}: no array 'x' (found: {', '.join(arrays) or 'none'})")
    x = arrays["x"]
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise DataError(f"{p}: 'x' must be a non-empty numeric array with a batch axis, got {x.dtype} {x.shape}")
    y = arrays.get("y")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),)):
        raise DataError(f"{p}: 'y' must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    return Data(p, x=x.astype(np.float32), labels=None if y is None else y.astype(np.int64))


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
