"""Tests of ``saelab.plots.toy``, moved from tests/test_toy.py.

Notes shared with the other tests moved from tests/test_toy.py: ``tests/toy/__init__.py``."""

from __future__ import annotations

import pandas as pd
import pytest
from matplotlib.figure import Figure

from saelab.plots.toy import plot_toy_absorption


def test_plot_toy_absorption(comparison):
    fig = plot_toy_absorption(comparison)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # absorption, child-parent cosine, recall heatmap, colour bar
    runs_only = plot_toy_absorption({"runs": comparison.runs.to_dict("records")})
    assert len(runs_only.axes) == 2
    with pytest.raises(ValueError, match="runs"):
        plot_toy_absorption({"runs": pd.DataFrame()})
