"""What a model family declaration holds (the facts alignment needs about a family), and its self-consistency
check. The declarations themselves are in ``mergeflow.arch.families``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# roles of the norms inside a layer: the pre-norms whose outputs the attention and the FFN read, and the
# norms some families apply to a block's output before it is added to the stream (Gemma 2/3, OLMo 2)
NORM_ROLES = ("n1", "n2", "n3", "n4")


@dataclass(frozen=True)
class Family:
    """One family's declaration: stored names of its tensors (relative to a layer) and the facts the
    alignment steps and the residual map need about it. Validated when registered (see ``_check``)."""

    name: str
    model_types: tuple[str, ...]
    layer_stack: str  # the word before the layer index: layers / layer / h
    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    gate: str | None = None  # gated MLP (SwiGLU/GeGLU): gate and up rows move together
    # fused q, k, v along the output (GPT-2 c_attn, Phi-3 qkv_proj); then q/k/v are unused
    qkv: str | None = None
    # fused gate then up along the output (Phi-3 gate_up_proj); then gate/up are unused
    gate_up: str | None = None
    # mixtures of experts: the path of expert e's FFN with "{e}" (Mixtral "block_sparse_moe.experts.{e}"), the
    # names of its up, gate and down projections, a shared expert (Qwen2-MoE), and the routers, which read
    # the stream (rows: experts). Each expert's hidden units are a permutation space of their own; the dense
    # up/gate/down (empty where there are none) may then be missing from some or all layers.
    experts: str | None = None
    expert_proj: tuple[str, str, str] = ("up_proj", "gate_proj", "down_proj")
    shared_expert: str | None = None
    routers: tuple[str, ...] = ()
    conv1d: bool = False  # GPT-2 Conv1D stores weights as (in, out)
    rope: Literal["none", "half", "interleaved"] = "none"
    # QK-norm: "head" normalises each head's query/key with one shared weight of the head's size (Qwen3,
    # Gemma 3); "full" normalises the whole projection, one weight per row (OLMo 2; its weights follow the
    # heads they scale, and a per-head scale of queries or keys is no longer exact)
    qk_norm: Literal["", "head", "full"] = ""
    q_norm: str | None = None  # stored names of the "full" QK-norm weights
    k_norm: str | None = None
    post_ln: bool = False  # post-norm blocks (BERT): attn_norm/ffn_norm normalise the stream itself
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = None
    hidden_key: str = "hidden_size"
    # the residual stream (see mergeflow.arch.stream_layout): per-layer norms (pre-norm: attn_norm feeds
    # q/k/v, ffn_norm feeds up/gate; post-norm: their outputs are the stream), the kind of norm, and the
    # tensors outside the stack
    attn_norm: str | None = None  # canonical role n1
    ffn_norm: str | None = None  # canonical role n2
    attn_out_norm: str | None = None  # role n3: normalises the attention's output before the residual add
    ffn_out_norm: str | None = None  # role n4: normalises the FFN's output before the residual add
    norm: Literal["layer", "rms"] = "layer"
    # a norm scales by (stored weight + offset): Gemma stores its scales as offsets from 1
    norm_offset: float = 0.0
    stream: tuple[tuple[str, int], ...] = ()  # (name suffix, axis of the stream): embeddings, their norms
    final_norm: str | None = None  # the norm before the head (pre-norm families)
    head: tuple[str, ...] = ()  # weights that read the final norm's output (stream on their last axis)
    outside: tuple[str, ...] = ()  # name parts of tensors known not to touch the stream (classifier outputs)
    # DeBERTa-v2: relative-position terms project with their own query/key weights unless the config's
    # share_att_key is true, so no query/key transform is exact then
    position_projections: bool = False

    def norm_paths(self) -> tuple[tuple[str, str | None], ...]:
        return tuple(
            zip(
                NORM_ROLES,
                (self.attn_norm, self.ffn_norm, self.attn_out_norm, self.ffn_out_norm),
                strict=True,
            )
        )

    def norms_on_outputs(self) -> bool:
        return self.attn_out_norm is not None or self.ffn_out_norm is not None


def check_family(f: Family) -> None:
    """A declaration that contradicts itself fails at import, naming the family and the fields."""
    problems = []
    if f.qkv is None and not (f.q and f.k and f.v):
        problems.append("q, k and v (or a fused qkv) are required")
    if f.qkv is not None and (f.q or f.k or f.v):
        problems.append("a fused qkv replaces q, k and v: leave them empty")
    if f.experts is None and not (f.up and f.down) and f.gate_up is None:
        problems.append("up and down (or gate_up) are required without experts")
    if f.experts is not None and "{e}" not in f.experts:
        problems.append("experts is a path with {e} for the expert's index")
    if f.gate_up is not None and f.gate is not None:
        problems.append("a fused gate_up replaces gate: leave it unset")
    if (f.qk_norm == "full") != (f.q_norm is not None and f.k_norm is not None):
        problems.append("qk_norm 'full' needs q_norm and k_norm names (and only it uses them)")
    if f.post_ln and f.norms_on_outputs():
        problems.append("post_ln and norms on the blocks' outputs exclude each other")
    if f.norm_offset and f.norm != "rms":
        problems.append("norm_offset is declared for RMS norms only")
    if f.stream and not (f.attn_norm or f.attn_out_norm):
        problems.append("a described stream needs the layers' norms (attn_norm or attn_out_norm)")
    if any(ax not in (0, 1, 2) for _s, ax in f.stream):
        problems.append("stream axes are 0, 1 or 2")
    if problems:
        raise ValueError(f"model family {f.name!r}: " + "; ".join(problems))
