"""Router rows of a mixture of experts, one per expert and layer, from each expert's prompts.

``hidden``: the base model reads each prompt (its BOS token first, left-padded); the residual stream
entering each layer at the last token (``hidden_avg``: averaged over the prompt's tokens), averaged
over the expert's positive prompts, minus the same over its negative prompts, normalised to length 1.
``cheap_embed``: the sum of the prompts' token embeddings, normalised (negative prompts' likewise,
subtracted, normalised again), the same row for every layer. ``random``: Gaussian rows from the seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.errors import InputError


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def tokenize(tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.bos_token or tokenizer.eos_token
    return tokenizer(
        [(tokenizer.bos_token or "") + p for p in prompts],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )


def hidden_rows(model: Any, tokenizer: Any, prompts: list[str], average: bool) -> torch.Tensor:
    """(layers, hidden): the residual stream entering each layer, at the last token or averaged."""
    enc = {k: v.to(next(model.parameters()).device) for k, v in tokenize(tokenizer, prompts).items()}
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True, return_dict=True)
    h = torch.stack(out.hidden_states[:-1]).float()  # (layers, batch, tokens, hidden)
    if average:
        mask = enc["attention_mask"].to(h.dtype)[None, :, :, None]
        per = (h * mask).sum(2) / mask.sum(2).clamp(min=1)
    else:
        per = h[:, :, -1, :]
    return per.mean(1)


def embed_rows(embed: torch.Tensor, tokenizer: Any, prompts: list[str], layers: int) -> torch.Tensor:
    enc = tokenize(tokenizer, prompts)
    ids, mask = enc["input_ids"].to(embed.device), enc["attention_mask"].to(embed.device)
    if int(ids.max()) >= embed.shape[0]:
        raise InputError(
            f"the base model's tokenizer gives token id {int(ids.max())}, beyond its "
            f"{embed.shape[0]} embedding rows"
        )
    total = (embed.float()[ids] * mask[..., None]).sum((0, 1))
    return _normed(total).expand(layers, -1)


def gate_vectors(
    mode: str,
    experts: list[Any],
    layers: int,
    hidden: int,
    seed: int,
    model: Any = None,
    tokenizer: Any = None,
    embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(layers, experts, hidden) router rows."""
    if mode == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((layers, len(experts), hidden), generator=gen)

    def rows(prompts: list[str]) -> torch.Tensor:
        if mode == "cheap_embed":
            assert embed is not None
            return embed_rows(embed, tokenizer, prompts, layers)
        return hidden_rows(model, tokenizer, prompts, mode == "hidden_avg")

    out = []
    for e in experts:
        v = rows(list(e.positive_prompts or []))
        if e.negative_prompts:
            v = v - rows(list(e.negative_prompts))
        out.append(_normed(v))
    return torch.stack(out, 1).cpu()


def warn_degenerate(gates: torch.Tensor, threshold: float = 5.0) -> None:
    """mergekit's check: router rows of one layer that are nearly linearly dependent route poorly."""
    bad = [
        i
        for i in range(gates.shape[0])
        if gates.shape[1] > 1 and float(torch.linalg.cond(gates[i].double())) > threshold
    ]
    if bad:
        warnings.warn(
            f"the router rows of {len(bad)} of {gates.shape[0]} layers are nearly dependent (e.g. "
            f"layer {bad[0]}): the experts' prompts may be too similar, some experts will get few "
            "tokens",
            stacklevel=2,
        )


@dataclass(eq=False)
class Gates:
    """Computes every router row once (loading the base model for ``hidden``), when first needed."""

    compute: Any  # () -> (layers, experts [+ shared], hidden)

    def deps(self) -> tuple[Any, ...]:
        return ()

    def run(self, ctx: Any) -> torch.Tensor:
        if ctx.note is not None:
            ctx.note("router rows from the experts' prompts")
        return self.compute()


@dataclass(frozen=True)
class GateRows:
    """One layer's router rows (the routed experts', or the shared expert's)."""

    gates: Gates
    layer: int
    start: int
    stop: int

    def deps(self) -> tuple[Any, ...]:
        return (self.gates,)

    def run(self, ctx: Any, gates: torch.Tensor) -> torch.Tensor:
        return gates[self.layer, self.start : self.stop].to(ctx.compute_dtype).contiguous()
