"""safetensors dtype strings <-> torch dtypes, and recipe dtype names."""

from __future__ import annotations

import torch

ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_ST = {v: k for k, v in ST_TO_TORCH.items()}
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in ST_TO_TORCH.items()}
NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def is_float(st_dtype: str) -> bool:
    return ST_TO_TORCH[st_dtype].is_floating_point
