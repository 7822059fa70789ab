"""Shared figure helpers (saelab.plots.common) and the SAE-stage figures (saelab.plots.saes):
readable log axes and token counts, fonts for any script, stable bytes, the frontier with the
dark-matter grid, CE bars grouped by splice hook."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from saelab.plots import common
from saelab.plots.common import (
    displayable,
    log_ticks,
    readable_log_axis,
    save_figure,
    token_font_families,
    write_plotly_html,
)
from saelab.plots.saes import (
    TRAIN_FVU_LABEL,
    plot_ce_recovered,
    plot_l0_fvu_frontier,
    plot_training_curves,
)


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


# ------------------------------------------------------------------ log axes
@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (29, 33, [29, 30, 31, 32, 33]),  # the issue's frontier: within a decade, round values
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


def test_pca_gives_every_latent_its_own_colour_and_marker():
    from saelab.plots.cooccurrence import category_styles, pca_panels

    styles = category_styles(25)
    assert len(set(styles)) == 25
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(250, 3))
    latents = np.repeat(np.arange(25), 10)
    fig = pca_panels(coords, [f"t{i % 12}" for i in range(250)], latents, "S")
    collections = fig.axes[3].collections  # by active latent, PC1 vs PC2
    looks = {
        (tuple(np.round(c.get_facecolor()[0], 3)), c.get_paths()[0].vertices.tobytes())
        for c in collections
    }
    assert len(collections) == 25 and len(looks) == 25


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


# ---------------------------------------------------------------- the figure registry
def _workflow_text() -> str:
    root = Path(__file__).resolve().parents[1]
    return "\n".join(p.read_text() for p in sorted((root / "workflow/rules").glob("*.smk")))


def test_readme_figure_map_is_the_registry():
    from saelab.figures import figure_map

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert figure_map() in readme, "README's figure map: python -m saelab.figures prints it"
    # the dark-matter paper map: each paper figure's target is its registry row's file
    from saelab.figures import FIGURES

    paper_rows = {
        line.split("|")[1].strip(): line.rsplit("`", 2)[-2]
        for line in readme.splitlines()
        if line.startswith(("| Fig ", "| Table ")) and line.endswith("` |")
    }
    assert paper_rows == {row.paper: row.file for row in FIGURES if row.paper}


def test_every_registry_row_names_what_exists():
    """Captions are files, drawing functions import, rule-written rows name a rule, and every
    function a row names is defined in the workflow; each file name belongs to one row."""
    import inspect
    import re

    from saelab.figures import FIGURES, figure, resolve_draw

    root = Path(__file__).resolve().parents[1]
    workflow = _workflow_text()
    defined = set(re.findall(r"^def (\w+)\(", workflow, flags=re.M))
    rules = set(re.findall(r"^rule (\w+):", workflow, flags=re.M))
    files = [row.file for row in FIGURES]
    assert len(files) == len(set(files))
    for row in FIGURES:
        if row.caption:
            assert (root / "workflow/report" / row.caption).is_file(), row.id
        assert row.targets in defined, row.id
        if row.draw:
            assert row.inputs in defined and row.rule is None, row.id
            assert row.params is None or row.params in defined, row.id
            assert callable(resolve_draw(row))
            assert inspect.signature(resolve_draw(row)).parameters, row.id
        else:
            assert row.rule in rules, row.id
    with pytest.raises(KeyError, match="unknown figure 'nope'"):
        figure("nope")
