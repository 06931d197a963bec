"""Progress of long work, reported to whoever asked: the library never draws or prints.

Functions that run for long take a :class:`Progress` (default: :data:`SILENT`). They open a :class:`Bar`
for each piece of work with a known or unknown total and advance it; the caller decides what to show.
The command line passes one that draws tqdm bars (``mergeflow.cli.progress``); a Python caller can pass
:func:`callback` to receive :class:`Event` objects, or its own implementation of the two protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Bar(Protocol):
    def update(self, n: float = 1) -> None:
        """``n`` more units done."""

    def set_total(self, total: float | None) -> None:
        """The amount of work changed (e.g. a resumed run has less left)."""

    def describe(self, text: str) -> None:
        """What the work is doing now (replaces the bar's caption)."""

    def postfix(self, text: str) -> None:
        """A short status after the counts (e.g. tensors written)."""

    def close(self) -> None:
        """The work ended (done or not)."""


class Progress(Protocol):
    def bar(self, desc: str, total: float | None = None, unit: str = "it", nested: bool = False) -> Bar:
        """A bar for one piece of work; ``unit`` "B" counts bytes; ``nested``: inside another bar's work."""


class _SilentBar:
    def update(self, n: float = 1) -> None:
        pass

    def set_total(self, total: float | None) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def postfix(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Silent:
    def bar(self, desc: str, total: float | None = None, unit: str = "it", nested: bool = False) -> Bar:
        return _SilentBar()


SILENT: Progress = _Silent()


@dataclass(frozen=True)
class Event:
    """One change of one bar: ``kind`` is open, update, total, describe, postfix or close; ``done`` and
    ``total`` in ``unit``s so far; ``text`` the caption or status (describe/postfix)."""

    kind: str
    desc: str
    done: float
    total: float | None
    unit: str
    text: str = ""


class _CallbackBar:
    def __init__(self, fn: Callable[[Event], None], desc: str, total: float | None, unit: str) -> None:
        self.fn, self.desc, self.total, self.unit, self.done = fn, desc, total, unit, 0.0
        self._send("open")

    def _send(self, kind: str, text: str = "") -> None:
        self.fn(Event(kind, self.desc, self.done, self.total, self.unit, text))

    def update(self, n: float = 1) -> None:
        self.done += n
        self._send("update")

    def set_total(self, total: float | None) -> None:
        self.total = total
        self._send("total")

    def describe(self, text: str) -> None:
        self._send("describe", text)

    def postfix(self, text: str) -> None:
        self._send("postfix", text)

    def close(self) -> None:
        self._send("close")


class _Callback:
    def __init__(self, fn: Callable[[Event], None]) -> None:
        self.fn = fn

    def bar(self, desc: str, total: float | None = None, unit: str = "it", nested: bool = False) -> Bar:
        return _CallbackBar(self.fn, desc, total, unit)


def callback(fn: Callable[[Event], None]) -> Progress:
    """A Progress that calls ``fn`` with an :class:`Event` on every change of every bar."""
    return _Callback(fn)
