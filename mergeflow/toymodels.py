"""Tiny Hugging Face models built offline, for tests, the demo and benchmarks.

Random-weight configs of the families mergeflow supports, a few hundred KB each, saved as
sharded safetensors with a small character-level tokenizer where the family has one. Nothing
is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyz .,!?'\n")


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=3
        )
    )


def _bert() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg)


def _roberta() -> Any:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        num_labels=3,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(cfg)


def _vit() -> Any:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
    )
    return ViTForImageClassification(cfg)


FAMILIES: dict[str, Callable[[], Any]] = {
    "llama": _llama,
    "gpt2": _gpt2,
    "bert": _bert,
    "roberta": _roberta,
    "vit": _vit,
}
TEXT = {"llama", "gpt2", "bert", "roberta"}


def save_tokenizer(path: Path) -> None:
    """A character-level fast tokenizer (tokenizer.json etc.), built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{c: i + 4 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
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
) -> Path:
    """Build a random ``family`` model at ``path``. With ``perturb_from``, start from that model's
    weights and add seeded noise, like a fine-tune of a shared base."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    torch.manual_seed(seed)
    model = FAMILIES[family]()
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
