"""Tiny Hugging Face models built offline, for tests, the demo and benchmarks.

Random-weight configs of the families mergeflow supports, a few hundred KB each, saved as
sharded safetensors with a small character-level tokenizer where the family has one. Nothing
is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyz .,!?'\n")


_SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
)
_DECODER = {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False}
_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)  # the toy tokenizer's (see save_tokenizer)
_MOE = {**_DECODER, **_IDS, "num_experts_per_tok": 2}
_GEMMA = {**_DECODER, **_IDS, "head_dim": 8, "tie_word_embeddings": True}
# family -> (config class, model class, config arguments); names resolved in transformers at build time
SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {**_DECODER, "num_key_value_heads": 1, "sliding_window": None},
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**_DECODER, "tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_DECODER, "head_dim": 8}),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=3),
    ),
    "bert": ("BertConfig", "BertForSequenceClassification", {**_SMALL, "num_labels": 3}),
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        {**_SMALL, "num_labels": 3, "max_position_embeddings": 66, "pad_token_id": 1},
    ),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        dict(
            vocab_size=64,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            num_labels=3,
        ),
    ),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        {
            **_SMALL,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "share_att_key": True,
            "position_buckets": 8,
            "max_relative_positions": 16,
            "num_labels": 3,
        },
    ),
    # Gemma: scales stored as offsets from 1, head tied to the embeddings (as released); Gemma 2/3 add norms on
    # the blocks' outputs and soft-capping (2) or QK-norm (3)
    "gemma": ("GemmaConfig", "GemmaForCausalLM", _GEMMA),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**_GEMMA, "query_pre_attn_scalar": 8, "sliding_window": 4},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**_GEMMA, "query_pre_attn_scalar": 8, "sliding_window": 4},
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**_DECODER, **_IDS}),  # fused qkv_proj and gate_up_proj
    # OLMo 2: norms after the blocks, full QK-norm
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {**_DECODER, **_IDS}),
    # mixtures of experts (3 experts, 2 per token); Qwen2-MoE with a shared expert and a dense layer 1
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {**_MOE, "num_local_experts": 3, "intermediate_size": 16},
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            **_MOE,
            "num_experts": 3,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "mlp_only_layers": [1],
        },
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {**_MOE, "num_experts": 3, "moe_intermediate_size": 16, "head_dim": 8},
    ),
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        {**_SMALL, "image_size": 16, "patch_size": 4, "num_channels": 3, "num_labels": 10},
    ),
}
FAMILIES = tuple(SPECS)
TEXT = set(FAMILIES) - {"vit"}


def _model(family: str, overrides: dict[str, Any] | None = None) -> Any:
    import transformers

    config_cls, model_cls, kwargs = SPECS[family]
    return getattr(transformers, model_cls)(
        getattr(transformers, config_cls)(**{**kwargs, **(overrides or {})})
    )


def save_tokenizer(
    path: Path, chars: list[str] | str = CHARS, words: tuple[str, ...] = (), special: tuple[str, ...] = ()
) -> None:
    """A character-level fast tokenizer (tokenizer.json etc.), built without any download: ``chars`` in
    order after four special tokens, then ``words`` (whole-word entries, reached only as added tokens of
    another tokenizer) and ``special`` (added special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "<unk>", "<s>", "</s>", *chars, *words]
    tok = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters decode back to the text
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if special:
        fast.add_special_tokens({"additional_special_tokens": list(special)})
    fast.save_pretrained(str(path))


def build(
    family: str,
    path: str | Path,
    seed: int = 0,
    shard_size: str | int = "50KB",
    tokenizer: bool = True,
    perturb_from: str | Path | None = None,
    perturb_scale: float = 0.02,
    dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
) -> Path:
    """Build a random ``family`` model at ``path`` (``config`` overrides the family's small config).
    With ``perturb_from``, start from that model's weights and add seeded noise, like a fine-tune of a
    shared base."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    torch.manual_seed(seed)
    model = _model(family, config)
    if perturb_from is not None:
        from safetensors.torch import load_file

        src = Path(perturb_from)
        index = src / "model.safetensors.index.json"
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.exists()
            else ["model.safetensors"]
        )
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(src / f)))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                stored = _stored_name(name, state)
                if stored is not None:
                    p.copy_(state[stored] + perturb_scale * torch.randn(p.shape, generator=gen))
    model = model.to(dtype)
    model.save_pretrained(str(path), max_shard_size=shard_size)
    if tokenizer and family in TEXT:
        save_tokenizer(path)
    return path


def _stored_name(name: str, state: dict[str, torch.Tensor]) -> str | None:
    if name in state:
        return name
    # a module name can differ from the name stored in the file; match on the unique suffix
    hits = [k for k in state if k.endswith(name.split(".", 1)[-1])]
    return hits[0] if len(hits) == 1 else None
