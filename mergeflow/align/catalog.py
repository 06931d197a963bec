"""Every alignment step that ships: one import line each registers it in STEPS."""

from mergeflow.align import orthogonal, permute, refine_step, rescale, rotate  # noqa: F401
from mergeflow.align.base import STEPS, StepDefinition

__all__ = ["STEPS", "StepDefinition"]
