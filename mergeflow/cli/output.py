"""Console and report output of the CLI: sizes, summaries, the alignment table, JSON run reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

MIN_BUDGET = 64 << 20  # below this not even the interpreter and one small tensor fit


def parse_size(value: str | None, option: str = "--max-memory", least: int = MIN_BUDGET) -> int | None:
    """A size option's value in bytes; sizes too small to run anything are refused here, not mid-run."""
    if value is None:
        return None
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        n = int(TypeAdapter(ByteSize).validate_python(value))
    except ValidationError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 8GB, 512MiB)", param_hint=option) from None
    if n < least:
        raise click.BadParameter(
            f"{value} is below the smallest budget mergeflow runs in ({human(least)})", param_hint=option
        )
    return n


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def check_report(report: str | None, prep: Any, out: str | Path) -> None:
    """Refuse a --report path over an input or a file mergeflow did not write, before any work."""
    if report:
        from mergeflow.errors import OutputError
        from mergeflow.io.ownership import check_file_target, lexical

        target = check_file_target(report, prep.inputs, "--report")
        final = lexical(out).resolve()
        if target.resolve() == final or final in target.resolve().parents:
            raise OutputError(f"--report {target} lies inside the output {final}; write it elsewhere")


def write_run_report(report: str | None, result: Any, prep: Any) -> None:
    if report:
        from mergeflow.io.ownership import atomic_write, lexical

        text = (
            json.dumps(
                {
                    "written_by": "mergeflow",
                    "output": str(result.out),
                    "seconds": result.seconds,
                    "tensors": result.plan.n_tensors,
                    "bytes_read": result.plan.bytes_read,
                    "bytes_written": result.plan.bytes_written,
                    "shards": len(result.plan.layouts),
                    "peak_rss_bytes": peak_rss(),
                    "max_memory_bytes": prep.max_memory,
                    "device": str(prep.device),
                    "operators": result.plan.ops_used,
                },
                indent=2,
            )
            + "\n"
        )
        atomic_write(lexical(report), lambda tmp: tmp.write_text(text))


def peak_rss() -> int:
    from mergeflow.graph.run import peak_rss_bytes

    return peak_rss_bytes()


def print_alignment(result: Any) -> None:
    if result.alignment is not None:
        from mergeflow.align.report import table

        click.echo(
            f"alignment to anchor '{result.plan.anchor}' (squared distances; alignment.json has every layer):"
        )
        click.echo(table(result.alignment))


def print_summary(result: Any, prep: Any, resume: bool, peak_rss: int, tasks: list[Path]) -> None:
    """What a run did: tensors, operators, output, time, downloads, task models, alignment."""
    plan = result.plan
    ops = ", ".join(f"{k} x{v}" for k, v in plan.ops_used.items())
    if resume:
        click.echo(f"resumed: kept {result.resumed_shards} of {len(plan.layouts)} shard(s) already written")
    click.echo(f"merged {plan.n_tensors} tensors of {', '.join(prep.recipe.models)} ({ops}) on {prep.device}")
    click.echo(
        f"wrote {result.out} ({len(plan.layouts)} shard(s), {human(plan.bytes_written)}) "
        f"in {result.seconds:.2f} s; peak RSS {human(peak_rss)}"
    )
    if plan.stats_means:
        click.echo(
            "fisher statistics: mean " + ", ".join(f"{m} {v:.3g}" for m, v in plan.stats_means.items())
        )
    if plan.left_out:
        more = f" and {len(plan.left_out) - 4} more" if len(plan.left_out) > 4 else ""
        click.echo(f"left out: {', '.join(plan.left_out[:4])}{more} (not in every model: partial)")
    if result.downloaded:
        held = f", at most {human(result.download_peak)} held at once" if result.download_peak else ""
        click.echo(
            f"downloaded {human(result.downloaded)} of shards from the Hub in {result.download_seconds:.1f} s"
            f"{held}"
        )
    for folder in tasks:
        click.echo(f"wrote task model {folder}")
    print_alignment(result)
