"""How the ``mergeflow`` command ends: SIGTERM and Ctrl-C (partial output kept for --resume), warnings as one
line, and leaving at once when a failed run's alignment lanes still compute."""

from __future__ import annotations

import os
import sys
from typing import Any

import click


def sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)  # unwinds like an error, so partial output is removed


def warning_line(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def interrupted(exc: BaseException | None) -> None:
    from mergeflow.io.output_dir import Interrupted

    if isinstance(exc, Interrupted):
        click.echo(
            f"{'terminated' if exc.terminated else 'interrupted'}; the partial output was kept in "
            f"{exc.partial}: run the same command with --resume to continue it into {exc.final}",
            err=True,
        )
        sys.exit(143 if exc.terminated else 130)
    click.echo("interrupted; nothing was written", err=True)
    sys.exit(130)


def leave_if_lanes_busy(exc: SystemExit, program: bool) -> None:
    """A failed or interrupted run whose lanes still compute a layer: the interpreter's shutdown would tear
    torch's thread pools down under them (SIGABRT, seen after Ctrl-C); what the run owned is already cleaned
    up and reported, so a program (``program``: not a caller in this process) leaves at once. The lanes module
    is loaded only if a run started."""
    lanes = sys.modules.get("mergeflow.graph.lanes")
    if program and lanes is not None and lanes.lanes_busy():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.code if isinstance(exc.code, int) else 1)
