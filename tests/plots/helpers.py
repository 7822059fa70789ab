"""Helpers of plots/test_common.py, plots/test_saes.py (moved verbatim from tests/test_plots.py)."""

from __future__ import annotations

import itertools


def tick_label_boxes(ax, which: str, draw: bool = True):
    """Window extents of the drawn, non-empty tick labels (major and minor) of one axis
    (``draw=False``: the figure was drawn already)."""
    fig = ax.figure
    if draw:
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    boxes = []
    for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
        label = tick.label1
        if label.get_visible() and label.get_text() and lo <= tick.get_loc() <= hi:
            boxes.append((label.get_text(), label.get_window_extent(renderer)))
    return boxes


def assert_no_overlap(ax, which: str, draw: bool = True) -> list[str]:
    boxes = tick_label_boxes(ax, which, draw)
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{which} tick labels {a!r} and {b!r} overlap"
    return [text for text, _ in boxes]
