"""Domain exceptions. The CLI prints an InputError as one line and exits 2; anything else exits 1."""

from __future__ import annotations


class MergeflowError(Exception):
    """Base of every error mergeflow raises on purpose."""


class InputError(MergeflowError):
    """Bad input from the user: recipe, model files, paths. Exit code 2."""


class RecipeError(InputError):
    """A recipe failed validation. Holds every problem found, each with its YAML location."""

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: {len(problems)} problem(s)" if len(problems) > 1 else ""
        super().__init__("\n".join([head, *problems]) if head else problems[0])


class ModelError(InputError):
    """A model directory or checkpoint file is missing, unreadable, corrupt or inconsistent."""


class MissingTensor(ModelError):
    pass


class ShapeMismatch(ModelError):
    pass


class UnsupportedArchitecture(ModelError):
    pass


class TokenizerMismatch(InputError):
    """The models' tokenizers give the same token id different meanings (or cannot be read)."""


class OutputError(InputError):
    """The output path is unusable (exists, is an input, not writable)."""


class MemoryBudgetError(InputError):
    """The plan cannot run within the requested memory budget."""
