"""What each supported family's tensors are, by their names as stored in checkpoint files.

Paths are relative to a layer prefix (``model.layers.7.``); the prefix itself is found in the
checkpoint, so ``bert.encoder.layer.N.`` and a headless ``encoder.layer.N.`` both match.
File names differ from the module names some transformers releases use in memory (ViT's
``vit.layers.N.attention.q_proj`` in ``state_dict()`` is ``vit.encoder.layer.N.attention.attention.query``
in the files); only the file names appear here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from mergeflow.registry import Registry

# tensors indexed by token id in their first dimension (embeddings, LM heads), in every family
VOCAB_RE = re.compile(r"embed_tokens|lm_head|\bwte\b|word_embeddings|embed_out|shared\.weight")


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
    qkv: str | None = None  # fused q, k, v along the output (GPT-2 c_attn, Phi-3 qkv_proj); then q/k/v are unused
    gate_up: str | None = None  # fused gate then up along the output (Phi-3 gate_up_proj); then gate/up are unused
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
    norm_offset: float = 0.0  # a norm scales by (stored weight + offset): Gemma stores its scales as offsets from 1
    stream: tuple[tuple[str, int], ...] = ()  # (name suffix, axis of the stream): embeddings, their norms
    final_norm: str | None = None  # the norm before the head (pre-norm families)
    head: tuple[str, ...] = ()  # weights that read the final norm's output (stream on their last axis)
    outside: tuple[str, ...] = ()  # name parts of tensors known not to touch the stream (classifier outputs)
    # DeBERTa-v2: relative-position terms project with their own query/key weights unless the config's
    # share_att_key is true, so no query/key transform is exact then
    position_projections: bool = False

    def norm_paths(self) -> tuple[tuple[str, str | None], ...]:
        return tuple(zip(NORM_ROLES, (self.attn_norm, self.ffn_norm, self.attn_out_norm, self.ffn_out_norm),
                         strict=True))

    def norms_on_outputs(self) -> bool:
        return self.attn_out_norm is not None or self.ffn_out_norm is not None


def _check(f: Family) -> None:
    """A declaration that contradicts itself fails at import, naming the family and the fields."""
    problems = []
    if f.qkv is None and not (f.q and f.k and f.v):
        problems.append("q, k and v (or a fused qkv) are required")
    if f.qkv is not None and (f.q or f.k or f.v):
        problems.append("a fused qkv replaces q, k and v: leave them empty")
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


FAMILIES: Registry[Family] = Registry("model family")


def _add(family: Family, **changes: Any) -> Family:
    """Register ``family`` (with ``changes``: a variant of it, e.g. a new name and model types); returns it."""
    family = replace(family, **changes)
    _check(family)
    FAMILIES.add(family.name, family)
    return family


LLAMA = _add(Family(
    "llama",
    ("llama", "mistral", "qwen2"),
    "layers",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    gate="mlp.gate_proj",
    rope="half",
    kv_heads_key="num_key_value_heads",
    attn_norm="input_layernorm",
    ffn_norm="post_attention_layernorm",
    norm="rms",
    stream=(("embed_tokens.weight", 1),),
    final_norm="norm",
    head=("lm_head.weight",),
))
_add(LLAMA, name="qwen3", model_types=("qwen3",), qk_norm="head")
_add(Family(
    "gpt2",
    ("gpt2",),
    "h",
    q="",
    k="",
    v="",
    o="attn.c_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
    qkv="attn.c_attn",
    conv1d=True,
    heads_key="n_head",
    hidden_key="n_embd",
    attn_norm="ln_1",
    ffn_norm="ln_2",
    stream=(("wte.weight", 1), ("wpe.weight", 1)),
    final_norm="ln_f",
    head=("lm_head.weight", "score.weight"),
))
BERT = _add(Family(
    "bert",
    ("bert", "roberta"),
    "layer",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    post_ln=True,
    attn_norm="attention.output.LayerNorm",
    ffn_norm="output.LayerNorm",
    stream=(("embeddings.word_embeddings.weight", 1), ("embeddings.position_embeddings.weight", 1),
            ("embeddings.token_type_embeddings.weight", 1), ("embeddings.LayerNorm.weight", 0),
            ("embeddings.LayerNorm.bias", 0)),
    # BERT's pooler reads the first token's stream; RoBERTa's classification head reads it directly
    head=("pooler.dense.weight", "classifier.dense.weight"),
    outside=("classifier.", "pooler.dense.bias"),
))
_add(BERT, name="deberta_v2", model_types=("deberta-v2",), q="attention.self.query_proj",
     k="attention.self.key_proj", v="attention.self.value_proj", position_projections=True)
_add(Family(
    "distilbert",
    ("distilbert",),
    "layer",
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    up="ffn.lin1",
    down="ffn.lin2",
    post_ln=True,
    heads_key="n_heads",
    hidden_key="dim",
    attn_norm="sa_layer_norm",
    ffn_norm="output_layer_norm",
    stream=(("embeddings.word_embeddings.weight", 1), ("embeddings.position_embeddings.weight", 1),
            ("embeddings.LayerNorm.weight", 0), ("embeddings.LayerNorm.bias", 0)),
    head=("pre_classifier.weight",),
    outside=("classifier.", "pre_classifier.bias"),
))
_add(Family(
    "vit",
    ("vit",),
    "layer",
    q="attention.attention.query",
    k="attention.attention.key",
    v="attention.attention.value",
    o="attention.output.dense",
    up="intermediate.dense",
    down="output.dense",
    attn_norm="layernorm_before",
    ffn_norm="layernorm_after",
    stream=(("embeddings.cls_token", 2), ("embeddings.position_embeddings", 2),
            ("embeddings.patch_embeddings.projection.weight", 0),
            ("embeddings.patch_embeddings.projection.bias", 0), ("embeddings.mask_token", 2)),
    final_norm="layernorm",
    head=("classifier.weight", "pooler.dense.weight"),
))
# Gemma: RMSNorm scales by (1 + weight), GeGLU, head tied to the embeddings by default
GEMMA = _add(LLAMA, name="gemma", model_types=("gemma",), norm_offset=1.0)
# Gemma 2 / 3: a norm before and after each block ("post_attention_layernorm" normalises the attention's output)
GEMMA2 = _add(GEMMA, name="gemma2", model_types=("gemma2",), ffn_norm="pre_feedforward_layernorm",
              attn_out_norm="post_attention_layernorm", ffn_out_norm="post_feedforward_layernorm")
_add(GEMMA2, name="gemma3", model_types=("gemma3_text",), qk_norm="head")
# Phi-3: q, k, v fused in qkv_proj; gate and up fused in gate_up_proj (gate first)
_add(LLAMA, name="phi3", model_types=("phi3",), q="", k="", v="", qkv="self_attn.qkv_proj", gate=None,
     gate_up="mlp.gate_up_proj")
# OLMo 2: no pre-norms; norms on the attention's and the FFN's outputs; QK-norm over the whole projection
_add(LLAMA, name="olmo2", model_types=("olmo2",), attn_norm=None, ffn_norm=None,
     attn_out_norm="post_attention_layernorm", ffn_out_norm="post_feedforward_layernorm", qk_norm="full",
     q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")


def family_for(model_type: str | None) -> Family | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None
