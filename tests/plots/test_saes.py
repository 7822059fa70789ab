"""Tests of ``saelab.plots.saes``, moved from tests/test_plots.py.

Notes shared with the other tests moved from tests/test_plots.py: ``tests/plots/__init__.py``."""

from __future__ import annotations

import pytest

from saelab.plots.saes import (
    TRAIN_FVU_LABEL,
    plot_ce_recovered,
    plot_l0_fvu_frontier,
    plot_training_curves,
)
from tests.plots.helpers import assert_no_overlap


def test_frontier_at_the_issues_l0s_has_separate_x_labels():
    """The issue's case: L0 29–33 made matplotlib label every minor tick, "2.9×10¹2.95×10¹…"."""
    points = [
        {"name": n, "arch": a, "l0": l0, "fvu": f}
        for n, a, l0, f in [("batchtopk", "batchtopk", 30.9, 0.053),
                            ("matryoshka", "matryoshka", 31.3, 0.059),
                            ("relu", "relu", 28.7, 0.129), ("tc", "matryoshka", 32.6, 0.214)]
    ]  # fmt: skip
    fig = plot_l0_fvu_frontier(points, "dim_centred")
    labels = assert_no_overlap(fig.axes[0], "x")
    assert 2 <= len(labels) <= 6 and all(t.isdigit() for t in labels), labels


def test_frontier_names_of_nearby_saes_do_not_collide():
    """The default run's named SAEs: BatchTopK (30.8, 0.051) and Matryoshka (31.3, 0.055) sat
    on top of each other ("matryoshka" over "batchtopk"); the second is moved below-left."""
    points = [
        {"name": n, "arch": a, "l0": l0, "fvu": f}
        for n, a, l0, f in [("batchtopk", "batchtopk", 30.8, 0.051),
                            ("matryoshka", "matryoshka", 31.3, 0.055),
                            ("relu", "relu", 28.7, 0.129),
                            ("matryoshka-transcoder", "matryoshka", 33.2, 0.205)]
    ]  # fmt: skip
    grid = [{"name": f"w{w}-k{k}", "width": w, "k": k, "l0": k * 0.98, "hook": "h",
             "fvu": 1.8 / w**0.5 / k**0.2 + 0.05, "arch": "topk"}
            for w in (256, 512, 1024, 2048, 4096) for k in (16, 32, 64)]  # fmt: skip
    fig = plot_l0_fvu_frontier(points, "dim_centred", grid)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # pyright: ignore[reportAttributeAccessIssue]
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in fig.axes[0].texts
             if not t.get_text().startswith("k = ")}  # fmt: skip
    assert set(boxes) == {"batchtopk", "matryoshka", "relu", "matryoshka-transcoder"}
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)


# ------------------------------------------------------------------ SAE figures
def test_training_curves_say_which_fvu_and_keep_token_ticks_apart():
    logs = {
        name: [{"tokens": t, "loss": 1 / (1 + t / 1e5) + 0.1 * i, "fvu": 0.2 / (1 + t / 1e5),
                "l0": 30 + i, "dead": 0.1} for t in range(40960, 1_250_000, 40960)]
        for i, name in enumerate(["batchtopk", "matryoshka"])
    }  # fmt: skip
    fig = plot_training_curves(logs)
    fvu_ax = fig.axes[1]
    assert fvu_ax.get_ylabel() == TRAIN_FVU_LABEL and "element-global" in TRAIN_FVU_LABEL
    fig.canvas.draw()
    for ax in fig.axes:
        labels = assert_no_overlap(ax, "x", draw=False)
        assert len(labels) <= 6, labels
        assert all(len(t) <= 5 for t in labels), labels  # "500k", "1M", not "1000000"
    for ax in (fig.axes[0], fvu_ax):
        assert_no_overlap(ax, "y", draw=False)


def test_frontier_draws_the_grid_as_one_line_per_width_and_names_both_hooks():
    points = [{"name": "batchtopk", "arch": "batchtopk", "l0": 31, "fvu": 0.05,
               "hook": "blocks.6.hook_resid_pre"}]  # fmt: skip
    grid = [{"name": f"w{w}-k{k}", "width": w, "k": k, "l0": k * 0.98, "fvu": 3 / w**0.5 / k**0.3,
             "hook": "blocks.6.hook_resid_post", "arch": "topk"}
            for w in (512, 1024, 2048, 4096) for k in (16, 32, 64)]  # fmt: skip
    fig = plot_l0_fvu_frontier(points, "dim_centred", grid)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for width in (512, 1024, 2048, 4096):
        line = lines[f"grid topk width {width}"]
        xs, ys = line.get_data()
        assert list(xs) == pytest.approx([k * 0.98 for k in (16, 32, 64)])  # sorted by L0
        assert list(ys) == pytest.approx([3 / width**0.5 / k**0.3 for k in (16, 32, 64)])
    notes = fig._supxlabel.get_text()
    assert "blocks.6.hook_resid_pre" in notes and "blocks.6.hook_resid_post" in notes
    assert "different hooks" in notes
    assert_no_overlap(ax, "x")


def test_ce_bars_are_grouped_and_labelled_by_the_hook_they_replace():
    rows = [
        {"name": "tc", "arch": "matryoshka", "ce_recovered_zero": 0.2, "ce_recovered_mean": 0.1,
         "kl": 0.3, "hook": "blocks.6.hook_mlp_out"},
        {"name": "batchtopk", "arch": "batchtopk", "ce_recovered_zero": 0.95,
         "ce_recovered_mean": 0.9, "kl": 0.7, "hook": "blocks.6.hook_resid_pre"},
        {"name": "relu", "arch": "relu", "ce_recovered_zero": 0.87, "ce_recovered_mean": 0.8,
         "kl": 1.4, "hook": "blocks.6.hook_resid_pre"},
    ]  # fmt: skip
    fig = plot_ce_recovered(rows)
    ax, ax_kl = fig.axes
    for axis in (ax, ax_kl):
        names = [t.get_text() for t in axis.get_xticklabels()]
        assert names == ["tc", "batchtopk", "relu"]  # grouped by hook, config order inside
        notes = [t.get_text() for t in axis.texts]
        assert notes == ["spliced at\nL6 mlp_out", "spliced at\nL6 resid_pre"]
    # the KL bars are the KLs of those SAEs, in that order
    assert [p.get_height() for p in ax_kl.patches] == pytest.approx([0.3, 0.7, 1.4])
    assert "baselines differ" in fig._supxlabel.get_text()
    one_hook = plot_ce_recovered(rows[1:])
    assert one_hook._supxlabel is None
