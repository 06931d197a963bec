"""Tensor-name patterns of overrides: globs and regular expressions, matched in linear time.

Regular expressions go through RE2 (``google-re2``), whose matching time is linear in the name's
length whatever the pattern, so no recipe can hang a run by catastrophic backtracking. RE2 has no
backreferences or look-around; a pattern that needs them is a validation error. Globs are translated
by ``fnmatch`` (whose translation does not backtrack) and matched against the whole name.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Protocol

MAX_PATTERN = 4096
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")


class Matcher(Protocol):
    def __call__(self, name: str) -> bool: ...


class PatternError(ValueError):
    pass


def _re2_options():  # noqa: ANN202  (re2.Options has no stubs)
    import re2

    opts = re2.Options()
    opts.log_errors = False  # errors are ours to report, in one line
    opts.max_mem = 64 << 20
    return opts


def compile_regex(pattern: str) -> Matcher:
    """A search matcher for ``pattern`` (RE2 syntax); raises PatternError with RE2's reason."""
    import re2

    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"longer than {MAX_PATTERN} characters")
    try:
        rx = re2.compile(pattern, options=_re2_options())
    except re2.error as exc:
        reason = (
            exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        )
        raise PatternError(f"{reason} (RE2 syntax: no backreferences or look-around)") from None
    return lambda name: rx.search(name) is not None


def compile_glob(pattern: str) -> Matcher:
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"longer than {MAX_PATTERN} characters")
    rx = re.compile(fnmatch.translate(pattern))
    return lambda name: rx.match(name) is not None


def parse_repo_ref(ref: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``ref`` is written as a repo id, else None."""
    repo, _at, rev = ref.partition("@")
    if not REPO_ID.fullmatch(repo) or ".." in repo or (_at and not rev):
        return None
    return repo, rev or None
