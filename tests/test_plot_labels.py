"""Point labels that do not overlap: the placement as pure code, and its estimate of text size against matplotlib's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sparsecc.plot_labels import DEFAULT_OFFSET, Box, label_size, place_labels

# the demo's variant names: the ones that land close together on the trade-off plot
NAMES = ["none", "zeros", "filter-l2 + fine-tune", "filter-l2 + fine-tune, plan", "groupwise-50 + fine-tune",
         "groupwise-50", "groupwise-25", "filter-l1", "filter-l2", "hybrid-24", "deprune-50", "detect"]


def _label_boxes(points, sizes, offsets):
    return [Box(x + dx, y + dy, x + dx + w, y + dy + h) for (x, y), (w, h), (dx, dy) in zip(points, sizes, offsets)]


def _overlapping_pairs(boxes):
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if a.overlaps(b)]


def _crowded(count, seed=0):
    """``count`` points within a patch of 60 x 20 points (a few ms and a point of accuracy on the plot)."""
    rng = np.random.default_rng(seed)
    return [(float(x), float(y)) for x, y in rng.uniform((200, 100), (260, 120), size=(count, 2))]


@pytest.mark.parametrize("points", [_crowded(12), _crowded(12, seed=1), [(300.0, 150.0)] * 12,
                                    [(300.0 + i, 150.0) for i in range(12)]],
                         ids=["cloud", "cloud-2", "same-place", "a-row"])
def test_labels_of_crowded_points_do_not_overlap(points):
    sizes = [label_size(name, 7) for name in NAMES]
    assert _overlapping_pairs(_label_boxes(points, sizes, [DEFAULT_OFFSET] * 12))  # one offset for all: they do
    boxes = _label_boxes(points, sizes, place_labels(points, sizes, marker=6.0))
    assert _overlapping_pairs(boxes) == []
    markers = [Box(x - 3, y - 3, x + 3, y + 3) for x, y in points]
    assert [(i, j) for i, box in enumerate(boxes) for j, m in enumerate(markers) if box.overlaps(m)] == []


def test_a_label_with_nothing_in_its_way_stays_where_it_was_and_the_nearest_free_place_is_taken():
    points = [(0.0, 0.0), (500.0, 0.0), (500.0, 0.0), (500.0, 0.0)]
    sizes = [(40.0, 9.0)] * 4
    offsets = place_labels(points, sizes)
    assert offsets[0] == offsets[1] == DEFAULT_OFFSET  # alone, and first at its place
    assert offsets[2] == (-DEFAULT_OFFSET[0] - 40.0, DEFAULT_OFFSET[1])  # the same height, left of the point
    assert offsets[3] == (DEFAULT_OFFSET[0], pytest.approx(DEFAULT_OFFSET[1] + 9.9))  # one label height up
    assert place_labels(points, sizes) == offsets  # the same input, the same plot


def test_labels_stay_inside_the_axes_while_there_is_room_and_never_overlap_when_there_is_none():
    sizes = [label_size(name, 7) for name in NAMES]
    axes = Box(0.0, 0.0, 400.0, 250.0)
    near_edge = [(390.0, 240.0 - i) for i in range(12)]  # top right: a label at the default offset would leave
    boxes = _label_boxes(near_edge, sizes, place_labels(near_edge, sizes, area=axes))
    assert all(box.inside(axes) for box in boxes) and _overlapping_pairs(boxes) == []
    assert all(box.x1 <= 390.0 for box in boxes)  # to the point's left
    tiny = Box(380.0, 230.0, 400.0, 250.0)  # no room for any label: placed outside it, still apart
    assert _overlapping_pairs(_label_boxes(near_edge, sizes, place_labels(near_edge, sizes, area=tiny))) == []


def test_the_size_estimate_holds_for_the_text_matplotlib_draws():
    """Placement works on estimated sizes; drawn by matplotlib, the labels must not overlap either."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from sparsecc.plot_labels import annotate_points

    figure, axes = plt.subplots(figsize=(7, 4.5))
    xs, ys = np.linspace(4.0, 4.2, 12), np.linspace(91.0, 91.5, 12)
    axes.plot([1.0, 8.0], [10.0, 100.0], "o")  # the plot's range: the 12 points lie within a few points
    figure.tight_layout()
    annotate_points(axes, xs, ys, NAMES, fontsize=7)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    drawn = [Text.get_window_extent(t, renderer) for t in axes.texts]  # the text alone, not its line
    assert len(drawn) == 12
    boxes = [Box(b.x0, b.y0, b.x1, b.y1) for b in drawn]
    assert _overlapping_pairs(boxes) == []
    assert sum(t.arrow_patch is not None for t in axes.texts) >= 6  # the moved ones point back to their point
    plt.close(figure)
