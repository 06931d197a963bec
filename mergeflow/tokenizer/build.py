"""The output tokenizer of a ``tokenizer:`` section, and where each of its tokens' rows come from.

mergekit's rules, made deterministic: ``union`` starts from the base model's tokenizer (else the first
model's), so the base's ids stay; the other models' tokens it lacks are appended, model by model in
recipe order, each model's in its own id order, ordinary tokens first and then added/special tokens
(with their flags). Every model's embedding and head rows are then re-indexed to the output's ids: a
model that has a token keeps its own row; for a token it lacks (or a token marked ``force``) it gets
the token's *fill* row: the ``tokens:`` entry's source, else the only model that has the token, else
the base model's row, else the mean over the models that have it, else zeros.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mergeflow.arch.families import VOCAB_RE
from mergeflow.errors import InputError
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.tokenizer_schema import ModelTokenRow, TokenizerSpec, ZeroRow

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model")


class TokenizerError(InputError):
    pass


@dataclass(eq=False)  # compared by identity: tasks holding it stay hashable
class VocabMap:
    tokenizer: Any  # the output tokenizer (transformers), saved with the output
    rows: int  # rows of every re-indexed tensor (the vocabulary, padded)
    tensors: dict[str, tuple[int, ...]]  # re-indexed tensor -> output shape
    index: dict[
        str, torch.Tensor
    ]  # model -> its row of each output id (-1: none or forced), length ``tokens``
    fill_ids: torch.Tensor  # output ids whose rows some model takes from elsewhere
    fill: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]  # (model, fill position, row, weight)
    tokens: int  # ids of the output tokenizer
    added: dict[str, list[str]] = field(default_factory=dict)  # model -> tokens new to the output, first few

    def summary(self) -> str:
        return f"{self.tokens} tokens ({self.rows} rows)"


def load_tokenizer(path: Path, who: str) -> Any | None:
    """The tokenizer files in ``path`` as a transformers tokenizer, or None when there are none."""
    if not any((path / n).is_file() for n in TOKENIZER_MARKERS):
        return None
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001  (transformers raises anything on a broken tokenizer)
        raise TokenizerError(
            f"{who}: its tokenizer in {path} does not load ({type(exc).__name__}: {exc})"
        ) from None


def vocab_rows_of(reader: ModelReader) -> tuple[list[str], int]:
    """The vocabulary-indexed tensors of a model (embeddings, heads) and their row count."""
    names = [t for t, i in reader.tensors.items() if VOCAB_RE.search(t) and len(i.shape) >= 1]
    rows = {reader.tensors[t].shape[0] for t in names}
    if len(rows) > 1:
        raise TokenizerError(
            f"model '{reader.name}': its embedding/head tensors have different row counts "
            f"({sorted(rows)}); cannot tell which rows are tokens"
        )
    return names, rows.pop() if rows else 0


def _union(
    base_tok: Any, order: list[tuple[str, Any, int]], extra: list[str], path: Path
) -> tuple[Any, dict]:
    out = load_tokenizer(path, "base model")  # a fresh copy: the base's own object stays as it is
    assert out is not None  # the base's tokenizer was loaded before (base_tok)
    have = set(out.get_vocab())
    new_plain: list[str] = []
    new_added: dict[str, Any] = {}
    added_by: dict[str, list[str]] = {}
    for model, tok, limit in order:
        decoder = tok.added_tokens_decoder
        added_text = {a.content for a in decoder.values()}
        for text, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i >= limit or text in have:
                continue
            if text in added_text:
                new_added.setdefault(text, decoder[i])
            else:
                new_plain.append(text)
            have.add(text)
            added_by.setdefault(model, []).append(text)
    if new_plain:
        out.add_tokens(new_plain)
    if new_added:
        out.add_tokens(list(new_added.values()))
    missing = [t for t in extra if t not in set(out.get_vocab())]
    if missing:
        out.add_tokens(missing)
    return out, added_by


def build_vocab(spec: TokenizerSpec, readers: Mapping[str, ModelReader], base: str | None) -> VocabMap:
    names = list(readers)
    first = base or names[0]
    toks: dict[str, Any] = {}
    limits: dict[str, int] = {}
    tensors: dict[str, tuple[int, ...]] = {}
    for m, r in readers.items():
        vnames, limits[m] = vocab_rows_of(r)
        toks[m] = load_tokenizer(Path(r.path), f"model '{m}'")
        for t in vnames:
            tensors.setdefault(t, tuple(r.tensors[t].shape[1:]))
    if toks[first] is None:
        raise TokenizerError(
            f"model '{first}' ({readers[first].path}) has no tokenizer files; the tokenizer "
            "section starts from its tokenizer"
        )
    for m in names:
        if toks[m] is None:
            warnings.warn(
                f"model '{m}' has no tokenizer files: its rows are taken to mean the tokens of '{first}'",
                stacklevel=2,
            )
            toks[m] = toks[first]
    extra = list(spec.tokens)
    added_by: dict[str, list[str]] = {}
    if spec.source == "union":
        order = [(m, toks[m], limits[m]) for m in [first, *[n for n in names if n != first]]]
        out, added_by = _union(toks[first], order, extra, Path(readers[first].path))
    else:
        src = first if spec.source == "base" else spec.source
        out = load_tokenizer(Path(readers[src].path), f"model '{src}'")
        if out is None:
            raise TokenizerError(f"tokenizer.source: model '{src}' has no tokenizer files")
        missing = [t for t in extra if t not in out.get_vocab()]
        if missing:
            out.add_tokens(missing)
    vocab = out.get_vocab()
    n = max(vocab.values()) + 1
    rows = (
        n if spec.pad_to_multiple_of is None else -(-n // spec.pad_to_multiple_of) * spec.pad_to_multiple_of
    )
    own = {m: {t: i for t, i in toks[m].get_vocab().items() if i < limits[m]} for m in names}
    index, fill_ids, fill = _rows(spec, vocab, own, names, base, n)
    return VocabMap(
        out,
        rows,
        {t: (rows, *rest) for t, rest in tensors.items()},
        index,
        fill_ids,
        fill,
        n,
        {m: v[:5] for m, v in added_by.items()},
    )


def _rows(
    spec: TokenizerSpec,
    vocab: dict[str, int],
    own: dict[str, dict[str, int]],
    names: list[str],
    base: str | None,
    n: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list]:
    index = {m: torch.full((n,), -1, dtype=torch.long) for m in names}
    for m in names:
        for text, i in vocab.items():
            j = own[m].get(text)
            if j is not None:
                index[m][i] = j
    forced = {vocab[t] for t, cfg in spec.tokens.items() if cfg.force and t in vocab}
    need = sorted({i for m in names for i in (index[m] < 0).nonzero().flatten().tolist()} | forced)
    contrib: dict[str, tuple[list[int], list[int], list[float]]] = {m: ([], [], []) for m in names}
    by_id = {i: t for t, i in vocab.items()}
    unknown = []
    for pos, i in enumerate(need):
        token = by_id.get(i)
        cfg = spec.tokens.get(token) if token is not None else None
        src = cfg.source if cfg is not None else None
        if isinstance(src, ZeroRow):
            continue
        if isinstance(src, ModelTokenRow):
            j = src.token_id if src.token_id is not None else own[src.model].get(src.token or "")
            if j is None:
                raise TokenizerError(
                    f"tokenizer.tokens.{token}: model '{src.model}' has no token {src.token!r}"
                )
            _add(contrib[src.model], pos, j, 1.0)
            continue
        if isinstance(src, str):
            if index[src][i] < 0:
                raise TokenizerError(f"tokenizer.tokens.{token}: model '{src}' has no token {token!r}")
            _add(contrib[src], pos, int(index[src][i]), 1.0)
            continue
        havers = [m for m in names if index[m][i] >= 0]
        if base is not None and base in havers:
            havers = [base]
        if not havers:
            unknown.append(token)
        for m in havers:
            _add(contrib[m], pos, int(index[m][i]), 1.0 / len(havers))
    if unknown:
        warnings.warn(
            f"{len(unknown)} token(s) of the output tokenizer are in no model (rows of zeros): "
            f"{', '.join(map(repr, unknown[:5]))}",
            stacklevel=3,
        )
    for i in forced:
        for m in names:
            index[m][i] = -1
    fill = [
        (m, torch.tensor(p, dtype=torch.long), torch.tensor(r, dtype=torch.long), torch.tensor(w))
        for m, (p, r, w) in contrib.items()
        if p
    ]
    return index, torch.tensor(need, dtype=torch.long), fill


def _add(lists: tuple[list[int], list[int], list[float]], pos: int, row: int, weight: float) -> None:
    lists[0].append(pos)
    lists[1].append(row)
    lists[2].append(weight)
