"""How an exception reads in a one-line error message."""

from __future__ import annotations

LIMIT = 300  # a library's first line can hold a whole graph path and more; a message line stays readable


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message (at most LIMIT characters), or its type's name when it has none."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return line if len(line) <= LIMIT else line[: LIMIT - 3] + "..."
