"""Tables for people: Markdown (reports) and aligned plain text (the terminal); numbers as people read them."""

from __future__ import annotations

import os
import re
import textwrap
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


def unique_prefixes(keys: list[str], least: int = 8) -> dict[str, str]:
    """Each key's shortest prefix (at least ``least`` characters) that no other key starts with, as git
    shortens commit ids: enough to tell entries apart, stable while the set of keys is."""
    ordered = sorted(set(keys))
    shared = [0] * len(ordered)  # longest prefix each key shares with a neighbour in sorted order
    for i in range(len(ordered) - 1):
        common = len(os.path.commonprefix(ordered[i:i + 2]))
        shared[i], shared[i + 1] = max(shared[i], common), common
    return {key: key[:max(least, shared[i] + 1)] for i, key in enumerate(ordered)}


def wrap_fields(text: str, width: int) -> list[str]:
    """``text`` ("k=v k=v ...") in lines of at most ``width`` characters, broken between fields where it
    can (``in=[1, 16, 12, 12]`` stays whole), inside a field only when the field alone is too long."""
    lines: list[str] = []
    for field in re.split(r" (?=[\w-]+=)", text):
        if lines and len(lines[-1]) + 1 + len(field) <= width:
            lines[-1] += " " + field
        else:
            lines += textwrap.wrap(field, width, break_on_hyphens=False) or [""]
    return lines


def wrap_column(rows: list[list[Any]], column: int, width: int) -> list[list[Any]]:
    """The rows with the text of ``column`` wrapped at ``width``: a long cell goes on over rows below
    its own, indented, with the other cells blank (a cell is never cut)."""
    wrapped = []
    for row in rows:
        first, *rest = wrap_fields(str(row[column]), width)
        wrapped.append([*row[:column], first, *row[column + 1:]])
        wrapped += [[""] * column + ["  " + line] + [""] * (len(row) - column - 1) for line in rest]
    return wrapped


def human(number: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"
