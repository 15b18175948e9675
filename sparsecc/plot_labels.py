"""Point labels on a plot that do not overlap: where to put each one (pure), and drawing them (matplotlib).

Labels of points that lie close together (variants of about the same latency and accuracy) would print
over each other at one fixed offset. :func:`place_labels` moves a label that would overlap one already
placed, or another point's marker, to the point's left or up or down by whole label heights, the nearest
free place first, inside the axes while they have room; the result depends only on the input, so a plot
drawn twice is the same. :func:`annotate_points` draws them, with a line back to its point for a label
that had to move.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Sequence

# a label's width per character and height, in units of its font size (DejaVu Sans, matplotlib's
# default: about 0.6 em per character on average; measured widths would tie the layout to a renderer)
CHAR_WIDTH_EM = 0.62
LINE_HEIGHT_EM = 1.3
DEFAULT_OFFSET = (4.0, 3.0)  # a label's lower-left corner from its point, in points: up and to the right


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: lower-left (x0, y0), upper-right (x1, y1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, other: "Box") -> bool:
        return other.x0 <= self.x0 and self.x1 <= other.x1 and other.y0 <= self.y0 and self.y1 <= other.y1


def label_size(text: str, fontsize: float) -> tuple[float, float]:
    """(width, height) of one line of ``text`` at ``fontsize``, in points (estimated, see CHAR_WIDTH_EM)."""
    return len(text) * CHAR_WIDTH_EM * fontsize, LINE_HEIGHT_EM * fontsize


def place_labels(points: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                 offset: tuple[float, float] = DEFAULT_OFFSET, marker: float = 6.0,
                 area: Box | None = None) -> list[tuple[float, float]]:
    """Where each label goes: its lower-left corner's offset from its point, so that no two labels
    overlap and no label covers a point's marker.

    Args:
        points: Each label's point, in a unit of length on the page (typographic points).
        sizes: Each label's (width, height), in the same unit.
        offset: Where a label goes when nothing is in its way. Defaults to DEFAULT_OFFSET.
        marker: The side of the square each point's marker takes. Defaults to 6.
        area: Where labels should stay (the plot's axes), as long as there is room in it. Defaults to anywhere.

    Returns:
        One (dx, dy) per label, in the order given; labels are placed in that order, so an earlier label
        keeps the place a later one would have wanted.
    """
    half = marker / 2
    taken = [Box(x - half, y - half, x + half, y + half) for x, y in points]
    offsets = []
    for (x, y), (width, height) in zip(points, sizes):
        dx, dy = _free_offset(x, y, width, height, offset, taken, area)
        taken.append(Box(x + dx, y + dy, x + dx + width, y + dy + height))
        offsets.append((dx, dy))
    return offsets


def _free_offset(x: float, y: float, width: float, height: float, offset: tuple[float, float],
                 taken: list[Box], area: Box | None) -> tuple[float, float]:
    """The free place nearest ``offset``: right of the point, else left of it, stepping up and down by the
    label's height (plus a gap). Within ``area`` while it has room; without one the search ends, as the
    boxes taken are finitely many: far enough up, none is in the way."""
    step = height * 1.1
    rows = count() if area is None else range(int((area.y1 - area.y0) / step) + 2)
    for k in rows:
        for dx in (offset[0], -offset[0] - width):
            for dy in ((offset[1],) if k == 0 else (offset[1] + k * step, offset[1] - k * step)):
                box = Box(x + dx, y + dy, x + dx + width, y + dy + height)
                if (area is None or box.inside(area)) and not any(box.overlaps(other) for other in taken):
                    return dx, dy
    return _free_offset(x, y, width, height, offset, taken, None)  # no room left in the area: clear of it


def annotate_points(axes, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str], fontsize: float = 7) -> None:
    """Label the points (xs[i], ys[i]) of ``axes`` with ``texts``, none over another (:func:`place_labels`),
    inside the axes where there is room.

    Call it once the figure's layout is final (after ``tight_layout``): places are worked out on the page.
    """
    to_points = 72.0 / axes.figure.dpi
    axes.get_xlim(), axes.get_ylim()  # settles pending autoscaling: positions are read from the limits
    pixels = axes.transData.transform(list(zip(xs, ys)))
    points = [(px * to_points, py * to_points) for px, py in pixels]
    frame = axes.bbox
    area = Box(frame.x0 * to_points, frame.y0 * to_points, frame.x1 * to_points, frame.y1 * to_points)
    offsets = place_labels(points, [label_size(t, fontsize) for t in texts], area=area)
    for x, y, text, (dx, dy) in zip(xs, ys, texts, offsets):
        moved = (dx, dy) != DEFAULT_OFFSET  # a line back to its point says whose label it is
        line = {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "relpos": (0.0 if dx > 0 else 1.0, 0.5)}
        axes.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                      va="bottom", ha="left", arrowprops=line if moved else None)
