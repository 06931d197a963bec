"""What each supported family's tensors are, by their names as stored in checkpoint files.

Paths are relative to a layer prefix (``model.layers.7.``); the prefix itself is found in the
checkpoint, so ``bert.encoder.layer.N.`` and a headless ``encoder.layer.N.`` both match.
File names differ from the module names some transformers releases use in memory (ViT's
``vit.layers.N.attention.q_proj`` in ``state_dict()`` is ``vit.encoder.layer.N.attention.attention.query``
in the files); only the file names appear here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mergeflow.registry import Registry

# tensors indexed by token id in their first dimension (embeddings, LM heads), in every family
VOCAB_RE = re.compile(r"embed_tokens|lm_head|\bwte\b|word_embeddings|embed_out|shared\.weight")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layer_stack: str  # the word before the layer index: layers / layer / h
    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    gate: str | None = None  # gated MLP (SwiGLU): gate and up rows move together
    qkv: str | None = None  # fused q, k, v (GPT-2 c_attn); then q/k/v are unused
    conv1d: bool = False  # GPT-2 Conv1D stores weights as (in, out)
    rope: Literal["none", "half", "interleaved"] = "none"
    qk_norm: bool = False
    post_ln: bool = False
    heads_key: str = "num_attention_heads"
    kv_heads_key: str | None = None
    hidden_key: str = "hidden_size"
    # the residual stream (see mergeflow.arch.stream_layout): per-layer norms (pre-norm: attn_norm feeds
    # q/k/v, ffn_norm feeds up/gate; post-norm: their outputs are the stream), the kind of norm, and the
    # tensors outside the stack
    attn_norm: str | None = None  # canonical role n1
    ffn_norm: str | None = None  # canonical role n2
    norm: Literal["layer", "rms"] = "layer"
    stream: tuple[tuple[str, int], ...] = ()  # (name suffix, axis of the stream): embeddings, their norms
    final_norm: str | None = None  # the norm before the head (pre-norm families)
    head: tuple[str, ...] = ()  # weights that read the final norm's output (stream on their last axis)


FAMILIES: Registry[Family] = Registry("model family")


def _add(family: Family) -> None:
    FAMILIES.add(family.name, family)


_LLAMA = dict(
    layer_stack="layers",
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
)
_BERT = dict(
    layer_stack="layer",
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
)

_add(Family("llama", ("llama", "mistral", "qwen2"), **_LLAMA))
_add(Family("qwen3", ("qwen3",), qk_norm=True, **_LLAMA))
_add(
    Family(
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
    ),
)
_add(Family("bert", ("bert", "roberta"), **_BERT))
_add(
    Family(
        "deberta_v2",
        ("deberta-v2",),
        **{
            **_BERT,
            "q": "attention.self.query_proj",
            "k": "attention.self.key_proj",
            "v": "attention.self.value_proj",
        },
    ),
)
_add(
    Family(
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
    ),
)
_add(
    Family(
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
    ),
)


def family_for(model_type: str | None) -> Family | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None
