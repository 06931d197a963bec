"""The configuration of ``mergeflow moe`` (pure data): mergekit-moe's format, read unchanged, plus
``seed`` and ``shard_size``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, model_validator

GATE_MODES = ("hidden", "hidden_avg", "cheap_embed", "random")
ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe")
# mergekit-moe picks an output architecture by the start of its name ("Mixtral", "Qwen MoE", "Qwen3 MoE")
ARCH_ALIASES = {
    "mixtral": "mixtral",
    "qwen": "qwen2_moe",
    "qwen2": "qwen2_moe",
    "qwen2_moe": "qwen2_moe",
    "qwen3": "qwen3_moe",
    "qwen3_moe": "qwen3_moe",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expert(_Strict):
    """A dense model whose MLPs become one expert (or the shared expert) of every layer."""

    source_model: str = Field(description="Model folder or repo id (relative paths: the working directory).")
    positive_prompts: list[str] | None = Field(None, description="Text this expert should receive.")
    negative_prompts: list[str] | None = Field(None, description="Text it should not receive.")
    noise_scale: float | None = Field(
        None, ge=0, description="Add Gaussian noise of this scale to its MLP weights."
    )
    residual_scale: float | None = Field(None, description="Scale its down projection (its output) by this.")


class MoeConfig(_Strict):
    """Attention, norms and embeddings from ``base_model``; each expert's MLPs as the experts."""

    base_model: str = Field(description="Model giving everything but the MLPs, and the tokenizer.")
    experts: list[Expert] = Field(min_length=1)
    gate_mode: Literal["hidden", "hidden_avg", "cheap_embed", "random"] = Field(
        "hidden",
        description="Router rows from the base model's hidden states on each expert's prompts (hidden: "
        "at the last token, hidden_avg: averaged over the tokens), from the token embeddings of its prompts "
        "(cheap_embed), or random.",
    )
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Output dtype. Default: the base model's."
    )
    experts_per_token: int = Field(2, ge=1, description="Experts each token is routed to.")
    shared_experts: list[Expert] | None = Field(
        None, description="At most one expert every token goes through (Qwen2-MoE output)."
    )
    architecture: str | None = Field(
        None,
        description="mixtral, qwen2_moe (mergekit: qwen) or qwen3_moe. "
        "Default: from the models and whether there is a shared expert.",
    )
    seed: int = Field(0, description="Seed of random gates and of expert noise.")
    shard_size: ByteSize = Field(ByteSize(5_000_000_000), description="Largest output shard file.")

    @model_validator(mode="after")
    def _checks(self) -> MoeConfig:
        problems = []
        if len(self.experts) < self.experts_per_token:
            problems.append(
                f"experts_per_token: {self.experts_per_token} is more than the {len(self.experts)} expert(s)"
            )
        if len(self.shared_experts or []) > 1:
            problems.append("shared_experts: at most one shared expert")
        if self.architecture is not None and self.architecture.lower() not in ARCH_ALIASES:
            problems.append(f"architecture: {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.gate_mode != "random":
            missing = [i for i, e in enumerate(self.experts) if not e.positive_prompts]
            if missing:
                problems.append(
                    f"experts[{missing[0]}].positive_prompts: gate_mode {self.gate_mode} needs "
                    "positive prompts for every expert"
                )
            if any(not e.positive_prompts for e in self.shared_experts or []):
                problems.append(f"shared_experts[0].positive_prompts: gate_mode {self.gate_mode} needs them")
            prompts = {
                (tuple(e.positive_prompts or ()), tuple(e.negative_prompts or ())) for e in self.experts
            }
            if len(self.experts) > 1 and len(prompts) == 1:
                problems.append("experts: every expert has the same prompts, so every router row is the same")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def arch(self) -> str | None:
        return ARCH_ALIASES[self.architecture.lower()] if self.architecture else None
