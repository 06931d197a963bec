"""Evaluation/statistics data: a text file (one example per line), JSONL with ``text`` (and optional
``label``) or with pre-split words ``tokens`` (and optional per-word ``tags``, for token
classification), or ``.npz`` with ``x`` (and optional ``y``): float ``x`` for vision and other tensor
inputs, integer ``x`` as token ids (``[N, T]``, for language models without a tokenizer). Every
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
    words: list[list[str]] | None = None  # pre-split words (token classification)
    tags: list[list[int]] | None = None  # a label per word

    def __len__(self) -> int:
        for part in (self.texts, self.words, self.x):
            if part is not None:
                return len(part)
        return 0

    def subset(self, n: int | None) -> Data:
        if n is None or n >= len(self):
            return self
        return self.rows(0, n)

    def part(self, index: int, parts: int) -> Data:
        """The index-th of ``parts`` contiguous, near-equal blocks of examples (one per process)."""
        if parts == 1:
            return self
        n = len(self)
        return self.rows(n * index // parts, n * (index + 1) // parts)

    def rows(self, start: int, stop: int) -> Data:
        cut = lambda v: None if v is None else v[start:stop]  # noqa: E731
        return Data(
            self.path, cut(self.texts), cut(self.x), cut(self.labels), cut(self.words), cut(self.tags)
        )


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
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((i, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{i}: invalid JSON ({exc.msg})") from None
    if records and isinstance(records[0][1], dict) and "tokens" in records[0][1]:
        return _words(p, records)
    for i, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{p}:{i}: each line must be an object with a string 'text'")
        if "label" in rec and not (isinstance(rec["label"], int) and not isinstance(rec["label"], bool)):
            raise DataError(f"{p}:{i}: 'label' must be an integer")
        if "label" in rec and not 0 <= rec["label"] < 2**31:
            raise DataError(
                f"{p}:{i}: 'label' {rec['label']} is out of range (class indices are 0 or more, below 2**31)"
            )
        texts.append(rec["text"])
        labels.append(rec.get("label"))
    if not texts:
        raise DataError(f"{p}: no examples")
    if any(lb is None for lb in labels) and any(lb is not None for lb in labels):
        raise DataError(f"{p}: some lines have a 'label' and others not")
    return Data(p, texts=texts, labels=None if labels[0] is None else np.asarray(labels, dtype=np.int64))


def _words(p: Path, records: list[tuple[int, Any]]) -> Data:
    """JSONL of pre-split words: {"tokens": [WORD, ...], "tags": [LABEL, ...]} (tags optional, one per word)."""
    words, tags = [], []
    for i, rec in records:
        toks = rec.get("tokens") if isinstance(rec, dict) else None
        if not isinstance(toks, list) or not toks or not all(isinstance(t, str) for t in toks):
            raise DataError(f"{p}:{i}: each line must be an object with 'tokens', a non-empty list of words")
        tg = rec.get("tags")
        if tg is not None and (
            not isinstance(tg, list)
            or len(tg) != len(toks)
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in tg)
        ):
            raise DataError(
                f"{p}:{i}: 'tags' must be a list of {len(toks)} labels (integers, 0 or more), one per word"
            )
        words.append(toks)
        tags.append(tg)
    if any(t is None for t in tags) and any(t is not None for t in tags):
        raise DataError(f"{p}: some lines have 'tags' and others not")
    return Data(p, words=words, tags=None if tags[0] is None else [t for t in tags if t is not None])


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
        raise DataError(
            f"{p}: 'x' must be a non-empty numeric array with a batch axis, got {x.dtype} {x.shape}"
        )
    y = arrays.get("y")
    if y is not None and (y.dtype.kind not in "iu" or y.shape != (len(x),)):
        raise DataError(f"{p}: 'y' must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    if x.dtype.kind in "iu":  # token ids (a causal or masked LM's input), kept as integers
        if x.min() < 0:
            raise DataError(f"{p}: integer 'x' is read as token ids, and {int(x.min())} is not one")
        return Data(p, x=x.astype(np.int64), labels=None if y is None else y.astype(np.int64))
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
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _fortran, dtype = read(fh)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > room:
            raise DataError(
                f"{p}: array {info.filename.removesuffix('.npy')!r} declares shape {tuple(shape)} "
                f"({nbytes / 2**30:.3g} GiB), more than half the memory available "
                f"({room / 2**30:.3g} GiB); use a smaller data file or --max-examples"
            )


def check_labels(data: Data, num_labels: int | None) -> None:
    if data.tags is not None and num_labels is not None:
        for i, tg in enumerate(data.tags):
            bad = [t for t in tg if t >= num_labels]
            if bad:
                raise DataError(
                    f"{data.path}: tag {bad[0]} of example {i} is out of range for a model with "
                    f"{num_labels} labels"
                )
    if data.labels is None or num_labels is None:
        return
    wrong = np.flatnonzero((data.labels < 0) | (data.labels >= num_labels))
    if len(wrong):
        raise DataError(
            f"{data.path}: label {int(data.labels[wrong[0]])} of example {int(wrong[0])} is out of range "
            f"for a model with {num_labels} labels"
        )


def batches(
    data: Data,
    tokenizer: Any,
    batch_size: int,
    max_length: int,
    device: torch.device,
    image_shape: tuple[int, ...] | None = None,
):
    """Yield (model inputs, labels or None, token mask or None) per batch. Word data: each word's tag on
    its first sub-token, -100 on the others and on special tokens."""
    for s in range(0, len(data), batch_size):
        labels = (
            None if data.labels is None else torch.as_tensor(data.labels[s : s + batch_size], device=device)
        )
        if data.words is not None:
            if tokenizer is None:
                raise DataError(f"{data.path}: word data needs a tokenizer in the model directory")
            enc = tokenizer(
                data.words[s : s + batch_size],
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            if data.tags is not None:
                labels = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
                for b, tg in enumerate(data.tags[s : s + batch_size]):
                    prev = None
                    for pos, w in enumerate(enc.word_ids(b)):
                        if w is not None and w != prev:
                            labels[b, pos] = tg[w]
                        prev = w
                labels = labels.to(device)
            inputs = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            yield inputs, labels, inputs.get("attention_mask")
        elif data.texts is not None:
            if tokenizer is None:
                raise DataError(f"{data.path}: text data needs a tokenizer in the model directory")
            enc = tokenizer(
                data.texts[s : s + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            inputs = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            yield inputs, labels, inputs.get("attention_mask")
        else:
            x = torch.as_tensor(data.x[s : s + batch_size], device=device)  # type: ignore[index]
            if image_shape is not None and not x.is_floating_point():
                raise DataError(
                    f"{data.path}: integer 'x' holds token ids; a vision model takes float images"
                )
            if image_shape is not None:
                if x.ndim == 3:  # (N, H, W): one channel, repeated to the model's channels
                    x = x.unsqueeze(1).expand(-1, image_shape[0], -1, -1)
                if tuple(x.shape[1:]) != tuple(image_shape):
                    raise DataError(
                        f"{data.path}: images of shape {tuple(x.shape[1:])}, the model expects "
                        f"{tuple(image_shape)}"
                    )
                yield {"pixel_values": x.contiguous()}, labels, None
            elif not x.is_floating_point():  # token ids
                yield {"input_ids": x}, labels, None
            else:
                yield {"inputs_embeds": x}, labels, None
