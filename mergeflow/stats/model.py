"""Load a Hugging Face model directory for evaluation: its transformers class from config.json, eval
mode, float32, on the chosen device, with its tokenizer when it has one.

Under a memory budget smaller than the model's float32 weights, the model is placed by accelerate (through
transformers' ``device_map``): whole modules in memory up to the budget, the rest read from the checkpoint's
own files at each forward pass. Slower, never out of memory; forward passes only (no gradients)."""

from __future__ import annotations

import gc
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergeflow.errors import InputError, ModelError
from mergeflow.files import read_text_capped
from mergeflow.stats.data import Data, check_labels
from mergeflow.stats.tokenizer_files import load_tokenizer


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    task: str  # "causal-lm", "classifier", "token-classifier", "masked-lm" or (headless) "encoder"
    num_labels: int | None
    image_shape: tuple[int, int, int] | None  # (channels, height, width) for vision models
    offloaded: bool = False  # placed by accelerate under a budget: part of the weights stay on disk
    device: torch.device = torch.device("cpu")  # where inputs go

    @property
    def input_device(self) -> torch.device:
        """Where the model's inputs go: its parameters' device, or under a placement the device asked for."""
        if self.offloaded:
            return self.device
        first = next(iter(self.model.parameters()), None)
        return first.device if first is not None and not first.is_meta else self.device


def weight_bytes(path: str | Path) -> int:
    """The model's weights in float32, from its safetensors headers (nothing is read)."""
    from mergeflow.io.reader import ModelReader

    reader = ModelReader("model", Path(path))
    return sum(4 * t.numel for t in reader.tensors.values())


def stored_bytes(path: str | Path) -> int:
    """The model's weights as stored (their dtypes), from its safetensors headers."""
    from mergeflow.io.reader import ModelReader

    return ModelReader("model", Path(path)).total_bytes


def freed() -> None:
    """Call after dropping the last reference to a loaded model: transformers' modules and accelerate's hooks
    form reference cycles, so its weights stay in memory until the cycle collector runs (measured on a placed
    7B model: the next barrier point's merge ran beside the last point's model, 15 GiB under an 8 GB budget)."""
    gc.collect()


def placement(device: torch.device, budget: int) -> dict[str, Any]:
    """from_pretrained arguments that place a model under ``budget`` bytes of weights per device: the GPU (when
    ``device`` is one) first, then host memory, then the checkpoint's files."""
    memory: dict[int | str, int] = {"cpu": budget}
    if device.type == "cuda":
        memory = {device.index or 0: budget, **memory}
    return {"device_map": "auto", "max_memory": memory}


def load_model(
    path: str | Path,
    device: torch.device,
    headless: bool = False,
    untie: bool = False,
    max_memory: int | None = None,
    skeleton: bool = False,
) -> Loaded:
    """The model of a Hugging Face folder with its tokenizer; ``headless`` also accepts a bare encoder
    (``BertModel``, ``ViTModel``: task "encoder"); ``untie``: a tied output head becomes a parameter of its
    own (its weights come from the caller, through ``torch.func.functional_call``); ``max_memory``: the most
    bytes of weights held in memory (see the module's doc), None for no limit; ``skeleton``: no weights at all
    (parameters on the meta device, buffers on ``device``), for callers that pass every weight themselves."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    p = Path(path)
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{p}: not a Hugging Face model directory (no config.json)")
    try:
        cfg = json.loads(read_text_capped(cfg_path, "config", 64 << 20))
        arch = cfg["architectures"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ModelError(f"{cfg_path}: no 'architectures' entry naming the model class") from None
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ModelError(f"{cfg_path}: transformers has no class {arch!r}")
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        task = "causal-lm"
    elif arch.endswith(("ForSequenceClassification", "ForImageClassification")):
        task = "classifier"
    elif arch.endswith("ForTokenClassification"):
        task = "token-classifier"
    elif arch.endswith("ForMaskedLM"):
        task = "masked-lm"
    elif headless and arch.endswith("Model"):
        task = "encoder"  # no head: compared by its last hidden state
    else:
        raise ModelError(
            f"{p}: {arch} has none of the heads statistics and evaluation read (causal or masked LM, "
            "sequence, image or token classifier)"
        )
    if skeleton:
        model = _skeleton(cls, p, device, untie)
        return _loaded(p, model, task, False, device)
    offload = max_memory is not None and weight_bytes(p) > max_memory
    try:
        model, info = cls.from_pretrained(
            str(p),
            attn_implementation="eager",
            dtype=torch.float32,
            output_loading_info=True,
            **({"tie_word_embeddings": False} if untie else {}),
            **(placement(device, max_memory) if offload and max_memory is not None else {}),
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot load the model ({str(exc).splitlines()[0]})") from None
    missing = sorted(k for k in info.get("missing_keys") or () if not (untie and k == "lm_head.weight"))
    if missing:
        warnings.warn(
            f"{p}: {len(missing)} weight(s) of {arch} are not in the checkpoint and were newly "
            f"initialised ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); what depends "
            "on them is random",
            stacklevel=2,
        )
    if not offload:
        model.to(device)
    return _loaded(p, model, task, offload, device)


def _skeleton(cls: Any, p: Path, device: torch.device, untie: bool) -> Any:
    import transformers
    from accelerate import init_empty_weights

    try:
        config = transformers.AutoConfig.from_pretrained(
            str(p), **({"tie_word_embeddings": False} if untie else {})
        )
        config._attn_implementation = "eager"
        with init_empty_weights():  # parameters on the meta device; buffers (e.g. RoPE's) computed as usual
            model = cls(config)  # the public constructor; float32, the default dtype
        model.tie_weights()  # as loading does: a tied head is the embedding's parameter
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot build the model ({str(exc).splitlines()[0]})") from None
    for mod in model.modules():
        for name, buf in mod._buffers.items():
            if buf is not None and not buf.is_meta:
                mod._buffers[name] = buf.to(device)
    return model


def _loaded(p: Path, model: Any, task: str, offload: bool, device: torch.device) -> Loaded:
    model.eval()
    tokenizer = None
    if any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")):
        tokenizer = load_tokenizer(p)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    image = None
    c = model.config
    if hasattr(c, "image_size") and hasattr(c, "num_channels"):
        size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
        image = (int(c.num_channels), int(size), int(size))
    labels = getattr(c, "num_labels", None) if task in ("classifier", "token-classifier") else None
    return Loaded(model, tokenizer, task, labels, image, offload, device)


class OnWeights:
    """A model called on other weights (``torch.func.functional_call``), with the attributes evaluation reads."""

    def __init__(self, model: Any, params: dict[str, torch.Tensor]) -> None:
        self.inner, self.params = model, params
        self.config = model.config

    def __call__(self, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.inner, self.params, (), kwargs)

    def parameters(self) -> Any:
        return iter(self.params.values())


def on_weights(loaded: Loaded, params: dict[str, torch.Tensor]) -> Loaded:
    """``loaded`` whose model runs on ``params`` (in-memory names) instead of its own weights."""
    from dataclasses import replace

    return replace(loaded, model=OnWeights(loaded.model, params))


def logits_and_mask(
    loaded: Loaded, inputs: dict[str, torch.Tensor], mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, mask of positions that count): causal LMs predict token t+1 at position t."""
    logits = loaded.model(**inputs).logits
    if loaded.task == "causal-lm":
        ids = inputs["input_ids"]
        keep = torch.ones_like(ids[:, 1:], dtype=torch.bool) if mask is None else mask[:, 1:].bool()
        return logits[:, :-1], keep
    if loaded.task in ("token-classifier", "masked-lm"):  # a distribution at every real token
        return logits, torch.ones(
            logits.shape[:2], dtype=torch.bool, device=logits.device
        ) if mask is None else mask.bool()
    return logits, None


def max_length_for(loaded: Loaded, data: Data, given: int | None) -> int:
    """--max-length: as given, else the longest of the first 2,000 examples in tokens (a sample: enough to
    size batches without tokenizing a large file twice), at most what the model's positions allow."""
    if given is not None:
        return given
    cap = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0) or 512
    tok = loaded.tokenizer
    if tok is None or (data.texts is None and data.words is None):
        return cap
    sample: list[Any] = data.texts if data.texts is not None else (data.words or [])
    enc = tok(sample[:2000], is_split_into_words=data.words is not None, truncation=False)
    longest = max((len(ids) for ids in enc["input_ids"]), default=2)
    return max(2, min(longest, cap))


def stored_names(model: Any) -> dict[str, str]:
    """In-memory parameter name -> the name it is stored under in checkpoints. transformers 5 renames
    some modules when loading (e.g. ViT's ``encoder.layer.N.attention.attention.query`` becomes
    ``layers.N.attention.q_proj``) and reverts that when saving; statistics must use stored names.
    Parameters that saving would transform rather than rename (fused or split weights) are left out."""
    state = {n: t.detach() for n, t in model.state_dict().items()}
    if any(t.is_meta for t in state.values()):  # weights left on disk, or none: a one-element stand-in for
        stand_in: dict[int, torch.Tensor] = {}  # each, shared by tied parameters
        state = {
            n: stand_in.setdefault(id(t), torch.zeros((), dtype=t.dtype).expand(t.shape))
            for n, t in model.state_dict(keep_vars=True).items()
        }
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: names are stored as they are
        return {n: n for n in state}
    reverted = revert_weight_conversion(model, dict(state))
    by_storage: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in reverted.items():
        t = t[0] if isinstance(t, list) else t
        by_storage.setdefault((t.data_ptr(), tuple(t.shape)), name)
    out = {}
    for name, t in state.items():
        stored = by_storage.get((t.data_ptr(), tuple(t.shape)))
        if stored is not None:
            out[name] = stored
    return out


def check_fits(loaded: Loaded, data: Data, model_dir: str | Path) -> None:
    """The data suits the model: labels in range, text for models with a tokenizer, arrays for vision."""
    check_labels(data, loaded.num_labels)
    if data.words is not None and loaded.task not in ("token-classifier", "encoder", "masked-lm"):
        raise InputError(
            f"{data.path}: pre-split words with per-word tags are for token classifiers; "
            f"{model_dir} is a {loaded.task} model"
        )
    if (
        data.tags is None
        and data.words is None
        and loaded.task == "token-classifier"
        and data.texts is not None
        and data.labels is not None
    ):
        raise InputError(
            f"{data.path}: a token classifier needs per-word tags (JSONL 'tokens' and 'tags'), not one "
            "label per text"
        )
    if (data.texts is not None or data.words is not None) and loaded.tokenizer is None:
        raise InputError(f"{model_dir}: text data needs the model's tokenizer files, and there are none")
    if data.x is not None and loaded.image_shape is None and data.x.dtype.kind == "f":
        raise InputError(
            f"{data.path}: float tensor data (.npz) is for vision models; {model_dir} takes text (or "
            "token ids: integer 'x')"
        )
