"""A LoRA adapter that turns BASE into (approximately) TUNED: per-weight truncated SVD of TUNED − BASE.

For each 2-D weight the two models store with one shape, D = TUNED − BASE (out × in; GPT-2's Conv1D
stores in × out, so D is transposed first and the adapter says ``fan_in_fan_out``) is factored as
D ≈ B·A with B = U_k·S_k (out × k) and A = V_kᵀ (k × in), k the given rank or, with ``energy``, the
smallest k whose singular values hold that share of ||D||² (at most the rank). Ranks well below the
weight's size use a randomized SVD (see :func:`top_singular`). Each module's alpha
equals its rank, so PEFT's scale is 1. Tensors are read one pair at a time: memory holds one
weight pair and the factors, never a model. Embeddings and the head, when asked, are saved whole
(``modules_to_save``). Other tensors that differ (norms, biases) cannot be a LoRA update: they are
counted in the result so the caller can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from mergeflow.io.lora import PREFIX
from mergeflow.io.reader import ModelReader
from mergeflow.patterns import compile_regex

EMBED = ("embed_tokens", "wte", "word_embeddings", "lm_head", "embed_out", "wpe", "position_embeddings")


@dataclass
class Extracted:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # adapter tensors by PEFT name
    ranks: dict[str, int] = field(default_factory=dict)  # module -> rank
    errors: dict[str, float] = field(default_factory=dict)  # module -> ||D - BA|| / ||D||
    saved: list[str] = field(default_factory=list)  # modules stored whole (modules_to_save)
    left_out: list[str] = field(default_factory=list)  # differing tensors a LoRA cannot carry
    total_sq: float = 0.0  # ||D||² over the factored modules
    residual_sq: float = 0.0  # ||D - BA||² over them

    def config(self, base: str, fan_in_fan_out: bool) -> dict[str, Any]:
        r = max(self.ranks.values(), default=1)
        return {
            "peft_type": "LORA",
            "base_model_name_or_path": base,
            "r": r,
            "lora_alpha": r,
            "target_modules": sorted(self.ranks),
            "rank_pattern": dict(self.ranks),
            "alpha_pattern": dict(self.ranks),
            "modules_to_save": sorted(self.saved) or None,
            "fan_in_fan_out": fan_in_fan_out,
            "use_rslora": False,
            "use_dora": False,
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": None,
            "inference_mode": True,
            "init_lora_weights": True,
        }


def _rank(s: torch.Tensor, rank: int, energy: float | None, total_sq: float | None) -> int:
    """``rank``, or with ``energy`` the fewest leading singular values holding that share of ||D||²
    (``total_sq``; None when ``s`` is the whole spectrum, whose own sum is then used)."""
    if energy is None:
        return min(rank, len(s))
    cum = torch.cumsum(s.double() ** 2, 0)
    need = int(torch.searchsorted(cum, energy * (cum[-1] if total_sq is None else total_sq)).item()) + 1
    return max(1, min(rank, need, len(s)))


OVERSAMPLE = 8


def top_singular(d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of at least the ``rank`` leading singular triplets of ``d``. A full SVD of a 7B model's
    FFN weight (4096 x 14336) takes minutes on a CPU; for ranks well below the size a randomized SVD
    (seeded, so reproducible) gives the leading triplets in about a second, exactly when ``d`` has rank
    at most ``rank`` + OVERSAMPLE and to within the power iterations' accuracy otherwise."""
    small = min(d.shape)
    if rank + OVERSAMPLE >= small // 2:
        return torch.linalg.svd(d, full_matrices=False)
    with torch.random.fork_rng(devices=[d.device] if d.device.type == "cuda" else []):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(d, q=rank + OVERSAMPLE, niter=4)
    return u, s, v.T


def extract(
    base: ModelReader,
    tuned: ModelReader,
    rank: int,
    device: torch.device,
    energy: float | None = None,
    modules: str | None = None,
    embeddings: bool = False,
    transposed: bool = False,
    progress: Any = None,
) -> Extracted:
    """Factor every differing 2-D weight (matching the regex ``modules`` if given) of ``tuned`` vs ``base``."""
    keep = compile_regex(modules) if modules else (lambda _n: True)
    out = Extracted()
    for name, info in tuned.tensors.items():
        if progress is not None:
            progress(name)
        other = base.tensors.get(name)
        if other is None or other.shape != info.shape or info.dtype not in ("F32", "F16", "BF16", "F64"):
            continue
        module = name.removesuffix(".weight")
        is_embed = any(part in name.split(".") for part in EMBED)
        if len(info.shape) != 2 or not name.endswith(".weight") or is_embed or not keep(name):
            t, b = tuned.read(name, torch.float32, device), base.read(name, torch.float32, device)
            if not torch.equal(t, b):
                if is_embed and embeddings and name.endswith(".weight"):
                    out.tensors[PREFIX + name] = t.cpu()
                    out.saved.append(module)
                else:
                    out.left_out.append(name)
            continue
        d = tuned.read(name, torch.float32, device) - base.read(name, torch.float32, device)
        if transposed:
            d = d.T  # (in, out) as stored -> (out, in)
        sq = float(d.double().pow(2).sum())
        if sq == 0.0:
            continue
        u, s, vh = top_singular(d, rank)
        k = _rank(s, rank, energy, None if len(s) == min(d.shape) else sq)
        b_factor, a_factor = u[:, :k] * s[:k], vh[:k]
        res = float((d - b_factor @ a_factor).double().pow(2).sum())
        out.tensors[f"{PREFIX}{module}.lora_A.weight"] = a_factor.contiguous().cpu()
        out.tensors[f"{PREFIX}{module}.lora_B.weight"] = b_factor.contiguous().cpu()
        out.ranks[module], out.errors[module] = k, (res / sq) ** 0.5
        out.total_sq += sq
        out.residual_sq += res
    return out


def config_json(ex: Extracted, base: str, fan_in_fan_out: bool) -> str:
    return json.dumps(ex.config(base, fan_in_fan_out), indent=2) + "\n"
