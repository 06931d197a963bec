"""The command line's progress: tqdm bars on stderr (the library only reports, see mergeflow.progress)."""

from __future__ import annotations

from typing import Any

from mergeflow.progress import SILENT, Bar, Progress


class _TqdmBar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: float = 1) -> None:
        self._bar.update(n)

    def set_total(self, total: float | None) -> None:
        self._bar.total = total
        self._bar.refresh()

    def describe(self, text: str) -> None:
        self._bar.set_description_str(text, refresh=True)

    def postfix(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self._bar.close()


class _Tqdm:
    def bar(self, desc: str, total: float | None = None, unit: str = "it", nested: bool = False) -> Bar:
        from tqdm import tqdm

        scale = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
        return _TqdmBar(
            tqdm(total=total, desc=desc, unit=unit, leave=not nested, dynamic_ncols=True, **scale)
        )


def console(quiet: bool) -> Progress:
    """Bars on the terminal, or nothing with --quiet."""
    return SILENT if quiet else _Tqdm()
