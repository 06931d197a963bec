"""Models whose vocabularies differ in size: embeddings and LM heads are merged on the rows (token
ids) every model has, and the rows beyond them are taken from the model that gives the tokenizer.

Row-by-row merging is only meaningful when the shared ids stand for the same tokens, so the
tokenizers' vocabularies are compared first; ids that disagree are an error naming both models.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mergeflow.arch.families import VOCAB_RE
from mergeflow.errors import TokenizerMismatch
from mergeflow.io.reader import ModelReader
from mergeflow.io.vocab_files import vocabulary


@dataclass(frozen=True)
class VocabRows:
    shared: int  # rows [0, shared) are merged
    source: str  # the model the rows [shared, rows) come from
    rows: int  # rows of the output


def check_tokenizers(dirs: Mapping[str, Path], shared: int) -> None:
    """Every model's tokenizer maps ids [0, shared) to the same tokens (where it can be read)."""
    vocabs = {m: vocabulary(d) for m, d in dirs.items()}
    unknown = [m for m, v in vocabs.items() if v is None]
    if unknown:
        warnings.warn(
            f"model(s) {', '.join(unknown)} have no tokenizer files: cannot check that token ids "
            f"0-{shared - 1} mean the same tokens in every model",
            stacklevel=2,
        )
    known = [(m, v) for m, v in vocabs.items() if v is not None]
    for (m0, v0), (m1, v1) in zip(known, known[1:], strict=False):
        for i in range(shared):
            if i in v0 and i in v1 and v0[i] != v1[i]:
                raise TokenizerMismatch(
                    f"tokenizers of models '{m0}' and '{m1}' differ at token id {i} ({v0[i]!r} vs {v1[i]!r}); "
                    "embedding rows are merged by token id, so these vocabularies cannot be merged"
                )


def vocab_rows(readers: Mapping[str, ModelReader], ref: str, source: str) -> dict[str, VocabRows]:
    """For each embedding/head tensor whose row count differs between the models (other dims equal):
    how its output is assembled. Tensors of any other kind that differ are left to the shape checks."""
    out: dict[str, VocabRows] = {}
    for t, info in readers[ref].tensors.items():
        if not VOCAB_RE.search(t) or len(info.shape) < 1:
            continue
        shapes = {m: r.tensors[t].shape for m, r in readers.items() if t in r.tensors}
        if len(shapes) != len(readers) or len({s[1:] for s in shapes.values()}) > 1:
            continue
        rows = {s[0] for s in shapes.values()}
        if len(rows) > 1:
            out[t] = VocabRows(min(rows), source, shapes[source][0])
    if out:
        dirs = {m: Path(r.path) for m, r in readers.items() if Path(r.path).is_dir()}
        check_tokenizers(dirs, min(v.shared for v in out.values()))
    return out
