"""Tests of ``saelab.plots.trajectories``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from saelab.features import FeatureSummary
from saelab.plots.common import save_figure
from saelab.plots.trajectories import (
    HOVER_DATA_ID,
    NEWCOMER_DROPPED_COLOUR,
    arrivals_at_last_token,
    draw_graph,
    evolution_figure,
    graph_from_json,
    trajectory_graph_figure,
    trajectory_graph_html_figure,
    write_html_atomic,
)
from saelab.runtime import write_json_atomic
from saelab.trajectories.describe import node_hover_texts
from saelab.trajectories.graph import trajectory_graph
from tests.trajectories.helpers import hand_evolution

CHROMIUM = Path("/usr/bin/chromium")


# ------------------------------------------------------------------ figures and the HTML


def test_evolution_figure_colours_apart():
    steps = [[1, 2, 3], [1, 4, 2, 9], [4, 1, 5, 2, 9], [4, 5, 1, 6]]
    fig = evolution_figure(steps, ["<bos>", "A", "B"], layer=3)
    ax = fig.axes[0]
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax.lines]  # fmt: skip
    assert NEWCOMER_DROPPED_COLOUR in colours  # 9 comes and goes
    assert colours.count("lightblue") == 3  # 1 stays: 3 segments
    assert colours.count("silver") == 2  # 2 is initial but drops out at the last step
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # rank axis inverted
    assert next(t.get_text() for t in ax.get_xticklabels()) == "initial"
    with pytest.raises(ValueError, match="tokens"):
        evolution_figure(steps, ["<bos>"], layer=3)
    # top 2: steps [1,2] [1,4] [4,1] [4,5]: newcomers 4 and 5 both end in the top 2
    top2 = evolution_figure(steps, ["<bos>", "A", "B"], layer=3, top=2).axes[0]
    assert top2.get_ylim() == (1.5, -0.5)
    assert "newcomers: 2 (2 at the end)" in next(t.get_text() for t in top2.texts)


class _StubTokenizer:
    def decode(self, ids):
        return f"tok{ids[0]}"


def _summary(width: int, layer: int) -> FeatureSummary:
    """A hand-made feature summary: latent i fires on token id 100 * layer + i."""
    top_n, window = 2, 3
    context = np.full((width, top_n, window), -1, dtype=np.int64)
    context[:, :, 1] = 100 * layer + np.arange(width)[:, None]
    return FeatureSummary(
        firing_count=np.full(width, 5), n_tokens=1000,
        top_rows=np.tile(np.arange(top_n), (width, 1)), top_values=np.ones((width, top_n), np.float32),
        context_tokens=context, context_values=np.zeros((width, top_n, window), np.float32),
        hist_edges=np.zeros((width, 2), np.float32), hist_counts=np.zeros((width, 1), np.int64),
        meta={"before": 1, "after": 1},
    )  # fmt: skip


def test_static_graph_figure_draws_every_edge():
    traced = trajectory_graph(hand_evolution(), 1)
    fig = trajectory_graph_figure(traced.graph, ["<bos>", "A", "B", "C"], [0, 1, 2], 1,
                                  {layer: {"top_tokens": ["x", "y"]} for layer in range(3)},
                                  {2: [11, 9]})  # fmt: skip
    ax = fig.axes[0]
    assert len(ax.lines) == traced.graph.number_of_edges()
    texts = [t.get_text() for t in ax.texts]
    assert "new: 11, 9" in texts and "lens: x, y" in texts


def test_html_opens_in_headless_chromium_with_hover_data(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install chromium`")
    traced = trajectory_graph(hand_evolution(), 1)
    summaries = {layer: _summary(16, layer) for layer in range(3)}
    hover = node_hover_texts(traced, summaries, _StubTokenizer(), n_tokens=3)
    # node (3, 2): 11 from token 1 and 9 from token 2, with layer-2 descriptions (tok211, tok209)
    assert "#11 from T1 &#x27;A&#x27;" in hover[(3, 2)] or "#11 from T1 'A'" in hover[(3, 2)]
    assert "tok211" in hover[(3, 2)] and "tok209" in hover[(3, 2)]
    fig = trajectory_graph_html_figure(traced.graph, ["<bos>", "A", "B", "C"], [0, 1, 2], 1, hover)
    path = write_html_atomic(fig, tmp_path / "graph.html")
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'class="main-svg"' in dom  # plotly drew the figure
    match = re.search(rf'<pre id="{HOVER_DATA_ID}" hidden="">(.*?)</pre>', dom, re.S)
    assert match, "the post-render script did not run"
    hover_data = match.group(1)
    for latent, token_id in ((11, 211), (9, 209), (7, 107), (6, 106)):
        assert f"#{latent} from" in hover_data and f"tok{token_id}" in hover_data


def test_graph_png_is_drawn_from_the_graph_json_as_from_the_traced_graph(tmp_path):
    """Rule plot_trajectory_graph draws the PNG from the files rule trajectory_graph writes (graph
    JSON, evolution JSON): the same figure, byte for byte, as drawing the traced graph itself."""
    evolution = hand_evolution()
    traced = trajectory_graph(evolution, 1)
    write_json_atomic(traced.to_json(), tmp_path / "graph_T1.json", indent=None)
    graph = json.loads((tmp_path / "graph_T1.json").read_text())
    rebuilt = graph_from_json(graph)
    assert {(u, v): d for u, v, d in rebuilt.edges(data=True)} == {
        (u, v): {**d, "trajectories": [tuple(p) for p in d["trajectories"]]}
        for u, v, d in traced.graph.edges(data=True)
    }
    lens = {int(layer): e for layer, e in evolution["logit_lens"]["4"].items()}
    direct = trajectory_graph_figure(
        traced.graph, evolution["metadata"]["tokens"], [0, 1, 2], 1, lens,
        arrivals_at_last_token(traced.graph, 3), "hand: SAE trajectory graph, final rank <= 1",
    )  # fmt: skip
    save_figure(direct, tmp_path / "direct.png")
    save_figure(draw_graph(graph, evolution), tmp_path / "drawn.png")
    assert (tmp_path / "drawn.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
