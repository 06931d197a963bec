"""Tiny Hugging Face models built offline, for tests, the demo and benchmarks.

Random-weight configs of the families mergeflow supports, a few hundred KB each, saved as
sharded safetensors with a small character-level tokenizer where the family has one. Nothing
is downloaded.
"""

from __future__ import annotations

import json
from functools import partial
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


def scramble_model(
    src: str | Path,
    dst: str | Path,
    seed: int = 0,
    noise: float = 0.0,
    residual: str | None = None,
    replace: bool = False,
    **which: bool,
) -> Path:
    """Copy a model with a random exact symmetry applied to every layer (see align.scramble), plus
    optional Gaussian noise of relative size ``noise`` on every tensor. ``residual``: also map the residual
    stream by a random ``permutation`` or ``orthogonal`` matrix (norm scales folded). Returns ``dst``.
    Written one layer at a time into one safetensors file (a layer in memory, whatever the model's size):
    the layers in order, then the tensors outside them. ``dst`` must be new or empty (its files would be
    overwritten) unless ``replace``: for a folder of the caller's own making, such as the demo's."""
    import shutil

    from mergeflow.align.scramble import scramble_layer
    from mergeflow.align.stream_map import ResidualMap, apply_layer, fold_layer, map_stream, solve
    from mergeflow.arch.canonical import from_canonical, to_canonical
    from mergeflow.arch.spec import arch_spec
    from mergeflow.io.dtypes import ST_TO_TORCH
    from mergeflow.io.reader import ModelReader
    from mergeflow.io.stream_save import Entry, save_streamed

    src, dst = Path(src), Path(dst)
    if not replace and dst.is_dir() and any(dst.iterdir()):
        raise FileExistsError(f"{dst}: not empty; scramble_model writes into a new or empty folder")
    reader = ModelReader("src", src)
    shapes = {n: t.shape for n, t in reader.tensors.items()}
    spec = arch_spec(reader.config, reader.tensors, shapes)
    gen = torch.Generator().manual_seed(seed)
    rmap = layout = None
    if residual is not None:  # one map of the stream; orthogonal maps fold the norm scales first
        from mergeflow.align.scramble import random_orthogonal
        from mergeflow.arch.stream_layout import residual_layout

        layout = residual_layout(spec, shapes, reader.config or {})
        d = spec.geometry.d_model
        if residual == "permutation":
            rmap = ResidualMap(perm=torch.randperm(d, generator=gen))
        else:  # a random orthogonal map, projected to the group the norms allow
            group = "orthogonal" if layout.norm == "rms" else "orthogonal_centred"
            rmap = solve(random_orthogonal(d, gen), group)
    fold = residual is not None and residual != "permutation"
    stream = {st.name: st for st in layout.tensors} if rmap is not None and layout is not None else {}
    final = layout.final_norm if stream and layout is not None else None
    gamma = reader.read(final).double() if final else None  # read once for every stream tensor
    done: dict[str, torch.Tensor] = {}  # the current layer's scrambled tensors, until written

    def noisy(t: torch.Tensor) -> torch.Tensor:
        if noise and t.is_floating_point():
            return t + noise * t.std().nan_to_num(0.0) * torch.randn(t.shape, generator=gen)
        return t

    def layer_tensor(layer: Any, name: str) -> torch.Tensor:
        if not done:  # the layer's first tensor: scramble the whole layer
            canon = to_canonical(spec, layer, {n: reader.read(n) for _r, n in layer.names})
            scramble_layer(canon, spec.geometry, gen, **which)
            if rmap is not None:
                if fold:
                    fold_layer(canon, spec.family.norm_offset)
                apply_layer(canon, rmap, fold)
            done.update(from_canonical(spec, layer, canon, torch.float32))
        return noisy(done.pop(name))

    def other(name: str) -> torch.Tensor:
        t = reader.read(name)
        st = stream.get(name)
        if st is not None and rmap is not None and layout is not None:
            t = map_stream(t.double(), st.kind, st.axis, rmap, fold, gamma, layout.norm_offset).float()
        return noisy(t)

    entries, placed = [], set()
    for layer in spec.layers:
        for _role, name in layer.names:
            info = reader.tensors[name]
            entries.append(
                Entry(name, tuple(info.shape), ST_TO_TORCH[info.dtype], partial(layer_tensor, layer, name))
            )
            placed.add(name)
    for name, info in reader.tensors.items():
        if name not in placed:
            entries.append(Entry(name, tuple(info.shape), ST_TO_TORCH[info.dtype], partial(other, name)))
    dst.mkdir(parents=True, exist_ok=True)
    partial_file = dst / ".model.safetensors.partial"  # renamed when whole: no half file under the real name
    save_streamed(entries, partial_file, {}, in_order=True)
    partial_file.replace(dst / "model.safetensors")
    reader.close()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            shutil.copyfile(f, dst / f.name)
    return dst
