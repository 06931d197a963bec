"""``mergeflow moe``: a mixture-of-experts config (mergekit-moe's format) -> a prepared plan that the
normal executor streams into an output directory.

The config becomes a recipe whose models are the base model and each distinct expert model (paths
relative to the working directory, as in mergekit; repo ids and ``MODEL+ADAPTER`` resolved like every
recipe's), so opening models, the Hub, memory budgets, resume and output writing are the merge's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mergeflow.align.catalog import STEPS
from mergeflow.errors import RecipeError
from mergeflow.files import read_text_capped
from mergeflow.graph.run import Options, Prepared, prepare
from mergeflow.merge.catalog import OPERATORS
from mergeflow.moe.arch import MLP_RE, choose_arch
from mergeflow.moe.gates import Gates, gate_vectors, warn_degenerate
from mergeflow.moe.plan import build_moe_plan
from mergeflow.recipe.moe_schema import MoeConfig
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import MAX_BYTES, YamlSource, read_yaml


def load_config(path: str | Path) -> tuple[MoeConfig, str]:
    src = read_yaml(path)
    if not isinstance(src.data, dict):
        raise RecipeError([f"{path}: a mixture-of-experts config is a mapping (base_model, experts, ...)"])
    try:
        cfg = MoeConfig.model_validate(src.data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
            problems.append(
                f"{src.where(loc)}: {dotted or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            )
        raise RecipeError(problems, str(path)) from None
    return cfg, read_text_capped(path, "config", MAX_BYTES)


def _local(path: str, config_dir: Path) -> str:
    """mergekit resolves relative paths against the working directory; a path found only beside the
    config is taken from there."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not (config_dir / p).exists():
        return path
    return str((config_dir / p).resolve())


def _as_recipe(cfg: MoeConfig, where: str) -> tuple[Any, dict[str, str]]:
    """The recipe of the models (base, then each distinct expert model) and expert source -> model name."""
    names: dict[str, str] = {cfg.base_model: "base"}
    for e in [*cfg.experts, *(cfg.shared_experts or [])]:
        names.setdefault(e.source_model, f"expert_{len(names) - 1}")
    models = {}
    for ref, name in names.items():
        path, _plus, lora = ref.partition("+")
        here = Path(where).resolve().parent
        models[name] = {"path": _local(path, here), **({"lora": _local(lora, here)} if lora else {})}
    data = {
        "models": models,
        "merge": "passthrough",
        "seed": cfg.seed,
        "output": {"shard_size": int(cfg.shard_size)},
    }
    if cfg.dtype is not None:
        data["out_dtype"] = cfg.dtype
    recipe = validate(YamlSource(data, f"{where} (models)"), OPERATORS, STEPS, root=Path.cwd())
    return recipe, names


def prepare_moe(path: str | Path, opts: Options) -> Prepared:
    cfg, text = load_config(path)
    recipe, names = _as_recipe(cfg, str(path))
    experts = [(names[e.source_model], e) for e in cfg.experts]
    shared = [(names[e.source_model], e) for e in cfg.shared_experts or []]

    def planner(recipe: Any, readers: dict[str, Any], max_memory: int | None) -> Any:
        base = readers["base"]
        has_bias = any(t.endswith("self_attn.q_proj.bias") for t in base.tensors)
        arch = choose_arch(cfg.arch, base.model_type, bool(shared), has_bias)
        layers = len({int(m["layer"]) for t in base.tensors if (m := MLP_RE.match(t))})
        hidden = int((base.config or {}).get("hidden_size") or 0)
        config = arch.config(base.config or {}, len(experts), cfg.experts_per_token, has_bias)
        if cfg.dtype is not None:
            config["torch_dtype"] = config["dtype"] = cfg.dtype
        gates = Gates(lambda: _gates(cfg, readers, layers, hidden, [e for _n, e in experts + shared], opts))
        return build_moe_plan(
            recipe, readers, arch, "base", experts, shared[0] if shared else None, gates, config, max_memory
        )

    return prepare(path, opts, recipe=recipe, recipe_text=text, planner=planner)


def _gates(
    cfg: MoeConfig, readers: dict[str, Any], layers: int, hidden: int, experts: list[Any], opts: Options
) -> Any:
    """Every router row, computed once when the first router tensor is written."""
    import torch

    from mergeflow.graph.run import resolve_device
    from mergeflow.tokenizer.build import load_tokenizer

    base = readers["base"]
    model = embed = tokenizer = None
    if cfg.gate_mode != "random":
        tokenizer = load_tokenizer(Path(base.path), "base model")
        if tokenizer is None:
            raise RecipeError(
                [
                    f"gate_mode {cfg.gate_mode}: the base model {base.path} has no tokenizer to read the "
                    "prompts with"
                ]
            )
    if cfg.gate_mode in ("hidden", "hidden_avg"):
        from mergeflow.io.hub_reader import HubReader
        from mergeflow.io.lora import LoraReader
        from mergeflow.stats.model import load_model

        if isinstance(base, LoraReader):
            raise RecipeError(
                [
                    f"gate_mode {cfg.gate_mode}: the base model has a LoRA adapter; merge it first "
                    "(a stage of its own) to read prompts through it"
                ]
            )
        if isinstance(base, HubReader):  # the whole base model reads the prompts: every shard on disk first
            for file in sorted({t.file for t in base.tensors.values()}):
                base.ensure(file)
        model = load_model(base.path, resolve_device(opts.device)).model
    elif cfg.gate_mode == "cheap_embed":
        name = next(t for t in base.tensors if t.endswith("embed_tokens.weight"))
        embed = base.read(name, dtype=torch.float32)
    gates = gate_vectors(cfg.gate_mode, experts, layers, hidden, cfg.seed, model, tokenizer, embed)
    del model
    warn_degenerate(gates[:, : len(cfg.experts)])
    return gates
