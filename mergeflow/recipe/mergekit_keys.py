"""What mergeflow reads of a mergekit config: its methods, top-level keys, and where its defaults and names differ."""

from __future__ import annotations

METHODS = {
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "slerp",
    "passthrough",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "nearswap",
    "karcher",
    "sce",
    "nuslerp",
    "multislerp",
}
# mergekit's defaults where they differ from mergeflow's (mergekit GeneralizedTaskArithmetic registry)
DEFAULTS = {"dare_ties": {"normalize": False}}
# methods whose random drop mergekit rescales to the task vector's L1 norm by default
L1_RESCALE = {"dare_ties", "dare_linear", "della", "della_linear"}
# mergekit names some parameters after the method
RENAMES = {"nuslerp": {"nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"}}
TOP_KEYS = {
    "models",
    "base_model",
    "merge_method",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "slices",
    "tokenizer",
    "chat_template",
    "name",
    "modules",
}
