"""What each supported family's tensors are, by their names as stored in checkpoint files.

Paths are relative to a layer prefix (``model.layers.7.``); the prefix itself is found in the
checkpoint, so ``bert.encoder.layer.N.`` and a headless ``encoder.layer.N.`` both match.
File names differ from the module names some transformers releases use in memory (ViT's
``vit.layers.N.attention.q_proj`` in ``state_dict()`` is ``vit.encoder.layer.N.attention.attention.query``
in the files); only the file names appear here.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from mergeflow.arch.family import Family, check_family
from mergeflow.registry import Registry

# tensors indexed by token id in their first dimension (embeddings, LM heads), in every family
VOCAB_RE = re.compile(r"embed_tokens|lm_head|\bwte\b|word_embeddings|embed_out|shared\.weight")


FAMILIES: Registry[Family] = Registry("model family")


def _add(family: Family, **changes: Any) -> Family:
    """Register ``family`` (with ``changes``: a variant of it, e.g. a new name and model types); returns it."""
    family = replace(family, **changes)
    check_family(family)
    FAMILIES.add(family.name, family)
    return family


LLAMA = _add(
    Family(
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
    )
)
_add(LLAMA, name="qwen3", model_types=("qwen3",), qk_norm="head")
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
    )
)
BERT = _add(
    Family(
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
        stream=(
            ("embeddings.word_embeddings.weight", 1),
            ("embeddings.position_embeddings.weight", 1),
            ("embeddings.token_type_embeddings.weight", 1),
            ("embeddings.LayerNorm.weight", 0),
            ("embeddings.LayerNorm.bias", 0),
        ),
        # BERT's pooler reads the first token's stream; RoBERTa's classification head reads it directly
        head=("pooler.dense.weight", "classifier.dense.weight"),
        outside=("classifier.", "pooler.dense.bias"),
    )
)
_add(
    BERT,
    name="deberta_v2",
    model_types=("deberta-v2",),
    q="attention.self.query_proj",
    k="attention.self.key_proj",
    v="attention.self.value_proj",
    position_projections=True,
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
        stream=(
            ("embeddings.word_embeddings.weight", 1),
            ("embeddings.position_embeddings.weight", 1),
            ("embeddings.LayerNorm.weight", 0),
            ("embeddings.LayerNorm.bias", 0),
        ),
        head=("pre_classifier.weight",),
        outside=("classifier.", "pre_classifier.bias"),
    )
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
        stream=(
            ("embeddings.cls_token", 2),
            ("embeddings.position_embeddings", 2),
            ("embeddings.patch_embeddings.projection.weight", 0),
            ("embeddings.patch_embeddings.projection.bias", 0),
            ("embeddings.mask_token", 2),
        ),
        final_norm="layernorm",
        head=("classifier.weight", "pooler.dense.weight"),
    )
)
# Gemma: RMSNorm scales by (1 + weight), GeGLU, head tied to the embeddings by default
GEMMA = _add(LLAMA, name="gemma", model_types=("gemma",), norm_offset=1.0)
# Gemma 2 / 3: a norm before and after each block ("post_attention_layernorm" normalises the attention's output)
GEMMA2 = _add(
    GEMMA,
    name="gemma2",
    model_types=("gemma2",),
    ffn_norm="pre_feedforward_layernorm",
    attn_out_norm="post_attention_layernorm",
    ffn_out_norm="post_feedforward_layernorm",
)
_add(GEMMA2, name="gemma3", model_types=("gemma3_text",), qk_norm="head")
# Phi-3: q, k, v fused in qkv_proj; gate and up fused in gate_up_proj (gate first)
_add(
    LLAMA,
    name="phi3",
    model_types=("phi3",),
    q="",
    k="",
    v="",
    qkv="self_attn.qkv_proj",
    gate=None,
    gate_up="mlp.gate_up_proj",
)
# OLMo 2: no pre-norms; norms on the attention's and the FFN's outputs; QK-norm over the whole projection
_add(
    LLAMA,
    name="olmo2",
    model_types=("olmo2",),
    attn_norm=None,
    ffn_norm=None,
    attn_out_norm="post_attention_layernorm",
    ffn_out_norm="post_feedforward_layernorm",
    qk_norm="full",
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
)

# mixtures of experts: each expert's FFN units are a permutation space of their own; the routers read the stream
_add(
    LLAMA,
    name="mixtral",
    model_types=("mixtral",),
    up="",
    gate=None,
    down="",
    experts="block_sparse_moe.experts.{e}",
    expert_proj=("w3", "w1", "w2"),
    routers=("block_sparse_moe.gate",),
)
QWEN2_MOE = _add(
    LLAMA,
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    experts="mlp.experts.{e}",
    shared_expert="mlp.shared_expert",
    routers=("mlp.gate", "mlp.shared_expert_gate"),
)
_add(
    QWEN2_MOE,
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    qk_norm="head",
    shared_expert=None,
    routers=("mlp.gate",),
)


def family_for(model_type: str | None) -> Family | None:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return None
