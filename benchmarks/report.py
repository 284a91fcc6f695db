"""Plain-text tables and JSON output shared by the benchmark commands."""
from __future__ import annotations

from pathlib import Path

from restr.runtime import atomic
from restr.tables import format_table  # noqa: F401  (re-exported for the benchmark modules)


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temporary file beside it, then rename)."""
    atomic.write_json(path, obj)
