"""Every merge operator that ships: one import line each registers it in OPERATORS."""

from mergeflow.merge import dare_linear, dare_ties, linear, passthrough, slerp, task_arithmetic, ties  # noqa: F401
from mergeflow.merge.base import OPERATORS, MergeOperator

__all__ = ["OPERATORS", "MergeOperator"]
