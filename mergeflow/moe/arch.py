"""Output architectures of a mixture of experts assembled from dense models: which dense families each
takes, where each expert's MLP tensors go, the router's name, and the config it writes."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

from mergeflow.errors import InputError

MLP_RE = re.compile(
    r"^(?P<pre>.*\.layers\.(?P<layer>\d+)\.)mlp\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$"
)


@dataclass(frozen=True)
class MoeArch:
    name: str
    dense: tuple[str, ...]  # model types of the dense models it takes
    expert: str  # relative to the layer prefix: {e} expert index, {proj} gate_proj/up_proj/down_proj
    router: str
    proj: dict[str, str]  # dense projection -> its name in an expert
    shared: str | None = None  # the shared expert's MLP ({proj})
    shared_router: str | None = None

    def config(self, base: dict[str, Any], n_experts: int, per_token: int, has_bias: bool) -> dict[str, Any]:
        """The output config.json: the base model's, made this architecture's."""
        cfg = {k: v for k, v in base.items() if k not in ("architectures", "model_type", "auto_map")}
        inter = base.get("intermediate_size")
        if self.name == "mixtral":
            cfg.update(
                model_type="mixtral",
                architectures=["MixtralForCausalLM"],
                num_local_experts=n_experts,
                num_experts_per_tok=per_token,
                sliding_window=None,
            )
        else:  # the Qwen MoE configs share their expert keys
            cfg.update(
                num_experts=n_experts,
                num_experts_per_tok=per_token,
                decoder_sparse_step=1,
                norm_topk_prob=True,
                mlp_only_layers=[],
                moe_intermediate_size=inter,
                use_sliding_window=False,
                sliding_window=None,
            )
            if self.name == "qwen2_moe":
                cfg.update(
                    model_type="qwen2_moe",
                    architectures=["Qwen2MoeForCausalLM"],
                    shared_expert_intermediate_size=inter,
                    qkv_bias=has_bias,
                )
            else:
                cfg.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"])
        if n_experts & (n_experts - 1):
            warnings.warn(
                f"{n_experts} experts is not a power of two; llama.cpp will not load the model", stacklevel=2
            )
        return cfg


_PROJ = {p: p for p in ("gate_proj", "up_proj", "down_proj")}
ARCHS = {
    "mixtral": MoeArch(
        "mixtral",
        ("llama", "mistral"),
        "block_sparse_moe.experts.{e}.{proj}.weight",
        "block_sparse_moe.gate.weight",
        {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
    ),
    "qwen2_moe": MoeArch(
        "qwen2_moe",
        ("llama", "mistral", "qwen2"),
        "mlp.experts.{e}.{proj}.weight",
        "mlp.gate.weight",
        _PROJ,
        "mlp.shared_expert.{proj}.weight",
        "mlp.shared_expert_gate.weight",
    ),
    "qwen3_moe": MoeArch("qwen3_moe", ("qwen3",), "mlp.experts.{e}.{proj}.weight", "mlp.gate.weight", _PROJ),
}


def choose_arch(asked: str | None, model_type: str | None, shared: bool, has_bias: bool) -> MoeArch:
    """The architecture asked for, else the first that takes these models (Mixtral first, as mergekit)."""

    def fits(a: MoeArch) -> str | None:
        if model_type not in a.dense:
            return f"{a.name} takes {'/'.join(a.dense)} models, not {model_type}"
        if shared and a.shared is None:
            return f"{a.name} has no shared expert"
        if not shared and a.shared is not None:
            return f"{a.name} needs one shared expert (shared_experts:)"
        if has_bias and a.name != "qwen2_moe":
            return f"{a.name} has no attention biases, which the base model has"
        return None

    if asked is not None:
        why = fits(ARCHS[asked])
        if why:
            raise InputError(f"architecture: {why}")
        return ARCHS[asked]
    reasons = []
    for a in ARCHS.values():
        why = fits(a)
        if why is None:
            return a
        reasons.append(why)
    raise InputError("no mixture-of-experts architecture takes these models: " + "; ".join(reasons))
