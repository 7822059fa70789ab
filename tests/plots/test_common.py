"""Tests of ``saelab.plots.common``, moved from tests/test_plots.py.

Notes shared with the other tests moved from tests/test_plots.py: ``tests/plots/__init__.py``."""

from __future__ import annotations

import json
import warnings

import pytest

from saelab.plots import common
from saelab.plots.common import (
    displayable,
    log_ticks,
    readable_log_axis,
    save_figure,
    ticks_at_values,
    token_font_families,
    write_plotly_html,
)
from tests.plots.helpers import assert_no_overlap


# ------------------------------------------------------------------ log axes
@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (29, 33, [29, 30, 31, 32, 33]),  # the frontier: within a decade, round values
        (4, 8, [4, 5, 6, 7, 8]),
        (64, 2560, [100, 200, 500, 1000, 2000]),  # 1-2-5 while they fit
        (60, 25600, [100, 1000, 10000]),
        (1, 1e12, [1, 1e3, 1e6, 1e9, 1e12]),  # many decades: every n-th power of ten
    ],
)
def test_log_ticks_are_few_and_round(lo, hi, expected):
    assert log_ticks(lo, hi).tolist() == pytest.approx(expected)


def test_log_ticks_refuse_a_range_a_log_axis_cannot_have():
    with pytest.raises(ValueError, match=r"0 < lo < hi, got \[0, 5\]"):
        log_ticks(0, 5)


@pytest.mark.parametrize(("lo", "hi"), [(29.2, 32.7), (0.051, 0.058), (3.5, 9.0), (60, 700)])
def test_a_narrow_log_axis_gets_plain_labels_that_do_not_overlap(lo, hi):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([lo, hi], [hi, lo])
    ax.set_xscale("log")
    ax.set_yscale("log")
    readable_log_axis(ax, "x")
    readable_log_axis(ax, "y")
    fig.canvas.draw()
    for which in ("x", "y"):
        labels = assert_no_overlap(ax, which, draw=False)
        assert len(labels) >= 2, labels
        assert not any("times" in t or "×" in t or "^" in t for t in labels), labels
    plt.close(fig)


def test_a_width_axis_is_labelled_at_every_width_it_shows():
    """Fig 3 and 11: SAE widths 256 … 4096 on a log axis, labelled at each width (1-2-5 ticks
    left both ends bare), without overlap; too many values fall back to round ticks."""
    import matplotlib.pyplot as plt

    widths = [256, 512, 1024, 2048, 4096]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(widths, [1, 2, 3, 4, 5])
    ax.set_xscale("log")
    ticks_at_values(ax, "x", widths + widths)
    fig.canvas.draw()
    assert assert_no_overlap(ax, "x", draw=False) == ["256", "512", "1024", "2048", "4096"]
    ticks_at_values(ax, "x", [2**i for i in range(8, 16)])  # 8 values: round ticks instead
    assert [t.get_text() for t in ax.get_xticklabels()] == ["500", "1000", "2000"]  # axis 256-4096
    plt.close(fig)


# ------------------------------------------------------------------ fonts
def test_displayable_escapes_only_what_no_font_can_draw():
    assert displayable("plain text, ‘quotes’ → ∑") == "plain text, ‘quotes’ → ∑"
    assert displayable("a\x01b\u200bc") == "a\\u0001b\\u200bc"  # control and format characters
    assert displayable("\U0010fffd") == "\\U0010fffd"  # private use: no font has it


@pytest.mark.skipif(
    "Droid Sans Fallback" not in token_font_families(),
    reason="Debian fonts-droid-fallback is not installed (`make fonts`)",
)
def test_cjk_hangul_and_indic_tokens_keep_their_characters_with_the_installed_fonts():
    text = "中文 ひらがな 한국어 हिन्दी العربية"
    assert displayable(text) == text


def test_token_figures_draw_every_script_without_a_missing_glyph(tmp_path):
    """Whatever fonts are installed, no glyph is missing: what no font has is escaped."""
    import networkx as nx

    from saelab.plots.trajectories import evolution_figure, trajectory_graph_figure

    tokens = ["The", " 中文", " 한국어", " हिन्दी", " 😀", "\x01", " ไทย", " end"]
    graph = nx.DiGraph()
    graph.add_edge((0, 0), (7, 1), empty=False, num_trajectories=2, best_final_position=1,
                   trajectories=[(1, 5)])  # fmt: skip
    lens = {1: {"top_tokens": ["中", "한"]}}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing from font.*")
        fig = trajectory_graph_figure(graph, tokens, [0, 1], 15, lens, {1: [5]})
        save_figure(fig, tmp_path / "graph.png", dpi=40)
        steps = [[1, 2], [2, 1, 3], [3, 2], [3, 2, 4], [3], [3, 5], [5, 3], [5], [5, 6]]
        save_figure(evolution_figure(steps, tokens, 1), tmp_path / "evolution.png", dpi=40)


# ------------------------------------------------------------------ stable bytes
def test_saving_the_same_figure_twice_gives_the_same_bytes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([1, 2, 3], [3, 1, 2])
        return fig

    save_figure(draw(), tmp_path / "a.png", dpi=50)
    monkeypatch.setitem(common.STABLE_METADATA, "png", None)  # matplotlib's default metadata
    save_figure(draw(), tmp_path / "default.png", dpi=50)
    monkeypatch.undo()
    save_figure(draw(), tmp_path / "b.png", dpi=50)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in (tmp_path / "a.png").read_bytes()
    assert b"Software" in (tmp_path / "default.png").read_bytes()


def test_plotly_pages_have_a_fixed_element_id(tmp_path):
    import plotly.graph_objects as go

    def page(path):
        return write_plotly_html(go.Figure(go.Scatter(x=[1, 2], y=[2, 1])), path,
                                 include_plotlyjs=False).read_text()  # fmt: skip

    first, again = page(tmp_path / "a" / "p.html"), page(tmp_path / "b" / "p.html")
    assert first == again
    assert page(tmp_path / "q.html") != first  # the id follows the file name
    assert json.dumps("plot-")[1:-1] in first
