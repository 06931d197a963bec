"""Files mergeflow wrote that carry no marker of their own folder: recognised by their content (a reports'
``written_by`` key, the PNG text chunk, a statistics header, a search study's tables), so that a single-file
output may replace only a file mergeflow wrote (see ``mergeflow.io.ownership.check_file_target``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

PNG_SIGNATURE = b"Software\x00mergeflow"
# reports and barrier JSON of versions before `written_by`, recognised by their exact keys
LEGACY_JSON = (
    {
        "output",
        "seconds",
        "tensors",
        "bytes_read",
        "bytes_written",
        "shards",
        "peak_rss_bytes",
        "max_memory_bytes",
        "device",
        "operators",
    },
    {"a", "b", "data", "examples", "variants"},
)


def nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _search_study(path: Path) -> bool:
    """A SQLite file holding the Optuna study of ``mergeflow search`` (read-only look)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = {r[0] for r in con.execute("SELECT study_name FROM studies")}
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return names == {"mergeflow-search"}


def file_written_by_mergeflow(path: Path) -> bool:
    """Whether the file at ``path`` carries mergeflow's mark: a JSON report with ``written_by``, a
    statistics file with ``mergeflow_stats`` metadata, or a PNG whose Software text is mergeflow."""
    try:
        with open(path, "rb", opener=nofollow) as fh:
            head = fh.read(1 << 16)
            if head.startswith(b"\x89PNG"):
                return PNG_SIGNATURE in head
            if head.startswith(b"SQLite format 3\x00"):
                return _search_study(path)
            if head.lstrip().startswith(b"{"):
                data = json.loads(head + fh.read(1 << 26)) if path.stat().st_size < 1 << 26 else None
                return isinstance(data, dict) and (
                    data.get("written_by") == "mergeflow" or set(data) in LEGACY_JSON
                )
            size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 1 << 62
            if size > 100_000_000:  # not a safetensors header (same limit as safetensors)
                return False
            header = head[8:] + fh.read(max(size - len(head) + 8, 0))
            return b'"mergeflow_stats"' in header[:size]
    except (OSError, ValueError):
        return False
