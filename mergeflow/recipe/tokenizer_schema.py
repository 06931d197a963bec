"""The ``tokenizer:`` and ``chat_template:`` sections of a recipe (pure data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAMED_TEMPLATES = ("chatml", "llama3", "mistral", "alpaca")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZeroRow(_Strict):
    """The token's row is all zeros."""

    kind: Literal["zero"]


class ModelTokenRow(_Strict):
    """The row of another token (by text or id) of one model."""

    kind: Literal["model_token"]
    model: str = Field(description="A key of models.")
    token: str | None = Field(
        None, description="The token whose row is taken, as the model's tokenizer spells it."
    )
    token_id: int | None = Field(None, ge=0, description="Or the row's index in that model's embeddings.")

    @model_validator(mode="after")
    def _one(self) -> ModelTokenRow:
        if (self.token is None) == (self.token_id is None):
            raise ValueError("give exactly one of token or token_id")
        return self


class TokenRows(_Strict):
    """Where one output token's embedding (and head) rows come from."""

    source: str | ZeroRow | ModelTokenRow | None = Field(
        None,
        description="A model name (its row of this token), {kind: zero}, or {kind: model_token, model, "
        "token | token_id}. Default: the token's row in each model that has it.",
    )
    force: bool = Field(False, description="Give every model this row, even models that have the token.")


class TokenizerSpec(_Strict):
    """The output's vocabulary, and how each model's embedding and head rows are re-indexed to it."""

    source: str = Field(
        "union",
        description="'union' (every model's tokens, the base's ids kept), 'base' (the base model's, "
        "else the first model's), or a model name.",
    )
    tokens: dict[str, TokenRows] = Field(
        default_factory=dict, description="Per-token row sources, by the token's text."
    )
    pad_to_multiple_of: int | None = Field(
        None, ge=1, description="Pad the embedding and head rows (zeros) to a multiple of this."
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value


def is_template_text(value: str) -> bool:
    """A template name, ``auto``, or text that looks like Jinja."""
    return value in NAMED_TEMPLATES or value == "auto" or "{{" in value or "{%" in value


def token_models(spec: TokenizerSpec) -> list[tuple[tuple[Any, ...], str]]:
    """Every model name the section refers to, with its key path inside the section."""
    out: list[tuple[tuple[Any, ...], str]] = []
    if spec.source not in ("union", "base"):
        out.append((("source",), spec.source))
    for tok, rows in spec.tokens.items():
        if isinstance(rows.source, str):
            out.append((("tokens", tok, "source"), rows.source))
        elif isinstance(rows.source, ModelTokenRow):
            out.append((("tokens", tok, "source", "model"), rows.source.model))
    return out
