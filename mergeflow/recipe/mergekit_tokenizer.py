"""mergekit's tokenizer_source, tokenizer block and chat_template, as the native tokenizer section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def convert_tokenizer(
    data: dict[str, Any],
    recipe: dict[str, Any],
    ref: Callable[[Any, tuple[Any, ...]], str | None],
    fail: Callable[[tuple[Any, ...], str], None],
) -> None:
    """tokenizer_source (base, union, model:PATH, PATH) and the tokenizer block, as the native
    tokenizer section; chat_template as is."""
    if data.get("chat_template") is not None:
        recipe["chat_template"] = data["chat_template"]
    legacy = data.get("tokenizer_source")
    block = data.get("tokenizer")
    if legacy is not None:
        if isinstance(legacy, str) and legacy.startswith("model:"):
            legacy = legacy[len("model:") :]
        block = {"source": legacy}
    if block is None:
        return
    if not isinstance(block, dict) or set(block) - {"source", "tokens", "pad_to_multiple_of"}:
        fail(("tokenizer",), "expected {source, tokens, pad_to_multiple_of}")
        return
    where = ("tokenizer_source",) if legacy is not None else ("tokenizer", "source")
    src = block.get("source", "union")
    out: dict[str, Any] = {"source": src if src in ("union", "base") else ref(src, where)}
    tokens = {}
    for tok, cfg in (block.get("tokens") or {}).items():
        if not isinstance(cfg, dict):
            fail(("tokenizer", "tokens", tok), "expected {source, force}")
            continue
        cfg = dict(cfg)
        s = cfg.get("source")
        if isinstance(s, str):
            cfg["source"] = ref(s, ("tokenizer", "tokens", tok, "source"))
        elif isinstance(s, dict) and "model" in s:
            cfg["source"] = {**s, "model": ref(s["model"], ("tokenizer", "tokens", tok, "source", "model"))}
        tokens[tok] = cfg
    if tokens:
        out["tokens"] = tokens
    if block.get("pad_to_multiple_of") is not None:
        out["pad_to_multiple_of"] = block["pad_to_multiple_of"]
    recipe["tokenizer"] = out
