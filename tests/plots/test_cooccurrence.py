"""Tests of ``saelab.plots.cooccurrence``, moved from tests/test_cooccurrence.py and
tests/test_plots.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py and tests/test_plots.py:
``tests/cooccurrence/__init__.py``, ``tests/plots/__init__.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_summary_figures_draw_every_sae_from_the_summary_tables():

    from saelab.plots import cooccurrence as plots

    names = ["matryoshka", "batchtopk"]
    summary = {
        "saes": {
            n: {
                "box_sizes": [[2, 3, 3], [], [5]],
                "per_group": {"n_subgraphs": [2, 0, 1], "subgraphs_per_latent": [0.5, 0, 0.1]},
            }
            for n in names
        }
    }
    by_index = pd.DataFrame({n: np.linspace(0.1, 0.2, 8) for n in names})
    node_info = [pd.DataFrame({"subgraph_size": [1, 1, 2, 2, 5, 5, 5, 5]}) for _ in names]
    opts = {"threshold": 0.0, "component_size": [150, 200], "group_sizes": [2, 2, 4]}
    data = {"summary": summary, "node_info": node_info, "by_index": by_index}
    panels = {
        name: [ax.get_title() for ax in draw(**data, **opts).axes]
        for name, draw in [
            ("subgraph_sizes", plots.draw_subgraph_sizes),
            ("group_subgraph_sizes", plots.draw_group_subgraph_sizes),
            ("group_subgraph_counts", plots.draw_group_subgraph_counts),
            ("cooccurrence_by_index", plots.draw_cooccurrence_by_index),
        ]
    }
    assert panels["subgraph_sizes"] == ["matryoshka (τ = 0)", "batchtopk (τ = 0)"]
    assert panels["group_subgraph_sizes"] == ["matryoshka (τ = 0)", "batchtopk (τ = 0)"]
    assert len(panels["group_subgraph_counts"]) == 2
    assert len(panels["cooccurrence_by_index"]) >= 1
    with pytest.raises(ValueError, match="shorter"):  # one node_info table per SAE
        plots.draw_subgraph_sizes(summary, node_info[:1], **opts)


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
