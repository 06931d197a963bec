"""The recipe data model (pure data: no torch, no file reads).

Each top-level section has its own model so that validation can check every section
even when another one is broken, and report all problems at once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, PrivateAttr, model_validator

from mergeflow.patterns import parse_repo_ref
from mergeflow.recipe.parts_schema import MergeOnly, Partial
from mergeflow.recipe.tokenizer_schema import TokenizerSpec

DType = Literal["float32", "float64", "bfloat16", "float16"]
ParamValue = Any  # a scalar, or a list of numbers (a gradient over layers); checked per operator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(Strict):
    """A source model."""

    path: str = Field(
        description="Hugging Face model directory, or a single .safetensors file. "
        "Relative paths are resolved against the recipe file's folder."
    )
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="Per-model operator parameters "
        "(e.g. weight, density) for this model; scalars or gradients.",
    )
    lora: str | None = Field(
        None,
        description="A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) applied to "
        "this model's weights as they are read: W + s·B·A per target, modules_to_save replacing tensors. "
        "Relative paths as for path. mergekit's `base+adapter` means the same.",
    )
    subfolder: str | None = Field(
        None,
        description="The folder inside the model's directory or Hub repository that holds its weights and "
        "config (e.g. a sentence-transformers module or one model of several in a repository).",
    )

    stage: str | None = Field(
        None,
        description="In a multi-stage recipe: the output of an earlier stage, by its name (instead of path).",
    )

    @model_validator(mode="before")
    @classmethod
    def _hub_long_form(cls, value: Any) -> Any:
        """``{hub: org/name, revision: REV}`` is the long form of ``path: org/name@REV``; a stage's output
        has its path filled in when the stages are loaded."""
        if isinstance(value, dict) and "stage" in value:
            if "path" in value or "hub" in value:
                raise ValueError("give path, hub or stage, not several")
            return {**value, "path": ""}
        if not isinstance(value, dict) or ("hub" not in value and "revision" not in value):
            return value
        if "hub" not in value:
            raise ValueError("revision goes with hub: (a Hugging Face repo id)")
        if "path" in value:
            raise ValueError("give path or hub, not both")
        value = dict(value)
        repo, rev = value.pop("hub"), value.pop("revision", None)
        if not isinstance(repo, str) or "@" in repo or parse_repo_ref(repo) is None:
            raise ValueError(
                f"hub: {repo!r} is not a Hugging Face repo id (org/name); give the revision as revision:"
            )
        if rev is not None and (not isinstance(rev, str) or not rev or "@" in rev):
            raise ValueError(f"revision: {rev!r} is not a branch, tag or commit")
        value["path"] = f"{repo}@{rev}" if rev else repo
        return value


class _Named(Strict):
    """Written ``NAME`` or ``{NAME: {PARAM: VALUE}}``."""

    name: str
    params: dict[str, ParamValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value, "params": {}}
        if isinstance(value, dict) and "name" not in value:
            if len(value) != 1:
                raise ValueError("write exactly one name, as {NAME: {PARAM: VALUE, ...}}")
            ((name, params),) = value.items()
            return {"name": name, "params": params if params is not None else {}}
        return value


class MergeSpec(_Named):
    """The merge operator and its parameters, written ``merge: {NAME: {PARAM: VALUE}}`` or ``merge: NAME``."""


class AlignStep(_Named):
    """One alignment step, written ``- NAME: {PARAM: VALUE}``."""


class Override(Strict):
    """Parameters for the tensors whose names match a glob (``match``) or a regular expression (``regex``)."""

    match: str | None = Field(None, description="Shell-style glob on tensor names, e.g. '*.mlp.*'.")
    regex: str | None = Field(None, description="Python regular expression searched in tensor names.")
    merge: MergeSpec | None = Field(None, description="Use another operator for these tensors.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Operator parameters for these tensors."
    )
    models: dict[str, dict[str, ParamValue]] = Field(
        default_factory=dict, description="Per-model parameters for these tensors, by model name."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> Override:
        if (self.match is None) == (self.regex is None):
            raise ValueError("give exactly one of 'match' (glob) or 'regex'")
        return self


class SliceSource(Strict):
    model: str = Field(description="A key of models.")
    layers: tuple[int, int] = Field(description="Layer range [start, end) taken from that model.")

    @model_validator(mode="after")
    def _range(self) -> SliceSource:
        if not 0 <= self.layers[0] < self.layers[1]:
            raise ValueError("layers must be [start, end) with 0 <= start < end")
        return self


class Slice(Strict):
    """Output layers built from layer ranges of one model (stacked as is) or of several (merged)."""

    sources: list[SliceSource] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Slice:
        if len({s.layers[1] - s.layers[0] for s in self.sources}) > 1:
            raise ValueError("every source of a slice must span the same number of layers")
        return self


class OutputOptions(Strict):
    """How the output directory is written."""

    shard_size: ByteSize = Field(
        ByteSize(5_000_000_000), description="Largest shard file, e.g. '5GB', '500MiB'."
    )
    config: str | None = Field(
        None,
        description="Model whose config.json (and generation_config.json) is "
        "copied. Default: base, else anchor, else the first model.",
    )
    tokenizer: bool | str = Field(
        True, description="Copy tokenizer files: true (from the config model), false, or a model name."
    )
    card: bool = Field(True, description="Write a README.md model card that embeds the recipe.")
    task_models: bool = Field(
        False,
        description="With merge_only: also write, for each model but the base, a full model (the merged "
        "backbone with that model's own head and extras, its config and tokenizer) to OUT.tasks/NAME, loadable "
        "with its own AutoModelFor... class.",
    )
    module_files: bool = Field(
        True,
        description="Copy the files a sentence-transformers model needs beside its weights (modules.json, "
        "sentence_bert_config.json, config_sentence_transformers.json and the non-weight files of the module "
        "folders modules.json lists, e.g. 1_Pooling/) from the config model.",
    )


SECTIONS: dict[str, tuple[Any, Any, str]] = {
    # key: (type, default, description)
    "models": (
        dict[str, str | ModelEntry],
        ...,
        "Source models by name: a path or repo id, or {path | hub, revision, subfolder, params, lora}.",
    ),
    "base": (str | None, None, "Name of the base model for task-vector operators (a key of models)."),
    "anchor": (str | None, None, "Model every other model is aligned to (a key of models), or 'auto'."),
    "align": (list[AlignStep], [], "Alignment steps, run in order on each non-anchor model."),
    "align_dtype": (
        Literal["float64", "float32"],
        "float64",
        "Precision each layer is aligned in (the per-layer steps: permute, rotate, rescale, orthogonal maps "
        "applied to layers). float64: the reference. float32: about half the time and memory of everything "
        "but the FFN similarity products on large models; the aligned weights agree with float64's to the "
        "output dtype's rounding. Whole-model steps (refine, activation statistics) stay in float64.",
    ),
    "merge": (MergeSpec, ..., "Merge operator: {NAME: {PARAM: VALUE}}."),
    "overrides": (list[Override], [], "Per-tensor parameter overrides, applied in order (later wins)."),
    "slices": (
        list[Slice],
        [],
        "Build the layer stack from layer ranges of the models, in order (a "
        "'frankenmerge' when each slice has one source); layers are renumbered. Embeddings come from "
        "the models of the first slice, final norm and head from those of the last.",
    ),
    "stats": (
        dict[str, str],
        {},
        "Statistics file per model (from `mergeflow stats`), for operators that "
        "need them (fisher, regmean): {MODEL: PATH}.",
    ),
    "outside_position": (
        float | None,
        None,
        "Gradient position (0 = first layer, 1 = last) of the tensors "
        "outside the layer stack. Default: 0 for embeddings, 1 for final norms and heads "
        "(converted mergekit configs use 0, as mergekit does).",
    ),
    "dtype": (DType, "float32", "Compute dtype."),
    "out_dtype": (DType | None, None, "Output dtype. Default: the dtype each tensor has in the first model."),
    "seed": (
        int,
        0,
        "Seed for randomised operators (DARE, DELLA). Same seed, same output on the same device type (CPU and CUDA draw different masks).",
    ),
    "merge_only": (
        MergeOnly,
        "all",
        "Which tensors are merged: all; backbone (those under the family's base-model "
        "prefix, e.g. bert.*, model.*: heads, classifiers and LM heads are left out of the output); or "
        "{include: [GLOB], exclude: [GLOB]} on names without that prefix. Names are matched across models "
        "with or without the prefix, so a bare pretrained encoder can be the base of fine-tunes with heads.",
    ),
    "partial": (
        Partial,
        "error",
        "Tensors of the merged part that only some models have: error (listing them), "
        "drop, or {keep: MODEL} (that model's copy). Integer buffers (position_ids) only some models "
        "have are always left out.",
    ),
    "tokenizer": (
        TokenizerSpec | None,
        None,
        "Build the output's tokenizer ('union', 'base' or a model name, or "
        "{source, tokens, pad_to_multiple_of}); every model's embedding and head rows are re-indexed to "
        "it by token text before merging. Replaces output.tokenizer.",
    ),
    "chat_template": (
        str | None,
        None,
        "Chat template of the output tokenizer: auto (the most common among the "
        "models), chatml, llama3, mistral, alpaca, or a Jinja template.",
    ),
    "output": (OutputOptions, OutputOptions(), "Output options."),
}


class Recipe(Strict):
    """A validated recipe. Paths in ``models`` are absolute after loading."""

    models: dict[str, ModelEntry]
    base: str | None = None
    anchor: str | None = None
    align: list[AlignStep] = []
    align_dtype: Literal["float64", "float32"] = "float64"
    merge: MergeSpec
    overrides: list[Override] = []
    slices: list[Slice] = []
    outside_position: float | None = Field(None, ge=0.0, le=1.0)
    stats: dict[str, str] = {}
    dtype: DType = "float32"
    out_dtype: DType | None = None
    seed: int = 0
    merge_only: MergeOnly = "all"
    partial: Partial = "error"
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    output: OutputOptions = OutputOptions()
    # ``where(path) -> "file:line:col"`` of the YAML the recipe was validated from, for errors found later
    _where: Any = PrivateAttr(default=None)

    def located(self, *path: str | int) -> str:
        """``file:line:col: `` of a key of the recipe's file (empty for a recipe built in code), to start a
        message about a problem found after validation (while planning)."""
        return f"{self._where(tuple(path))}: " if self._where is not None else ""

    @property
    def config_source(self) -> str:
        return (
            self.output.config
            or self.base
            or (self.anchor if self.anchor not in (None, "auto") else None)
            or next(iter(self.models))
        )

    def model_names(self) -> list[str]:
        return list(self.models)
