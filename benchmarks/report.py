"""Plain-text tables and JSON output shared by the benchmark commands."""
from __future__ import annotations

from pathlib import Path

from restr.runtime import atomic


def format_table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """Left-aligned first column, right-aligned others; None prints as '-'."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)]
    return "\n".join(out)


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temporary file beside it, then rename)."""
    atomic.write_json(path, obj)
