"""Tables for people: Markdown (reports) and aligned plain text (the terminal); numbers as people read them."""

from __future__ import annotations

from typing import Any


def markdown_table(rows: list[list[Any]], headers: list[str]) -> str:
    """A GitHub Markdown table; ``|`` inside cells is escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[list[Any]], headers: list[str], rule: bool = True) -> str:
    """Columns padded to their widest cell; a dashed rule under the headers unless ``rule`` is False."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers)] + ([line(["-" * w for w in widths])] if rule else []) + [line(r) for r in rows])


def human(number: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"
