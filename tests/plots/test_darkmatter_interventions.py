"""Tests of ``saelab.plots.darkmatter_interventions``, moved from
tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saelab.plots.darkmatter_interventions import (
    plot_components,
    plot_downstream_ce,
    plot_pursuit_breakdown,
    plot_train_on_error,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ figures


def test_figures_draw_from_synthetic_tables():
    scores = {
        "scorer": "token_set",
        "targets": {
            name: {"bins": ["Not", "Q1", "Q2"], "accuracy": [0.9, 0.8, 0.5],
                   "ci95": [0.05, 0.1, 0.1], "n_latents": 3}
            for name in ("linear", "nonlinear")
        },
    }  # fmt: skip
    fig = plot_train_on_error(scores)
    assert "token_set" in fig.axes[0].get_title() and len(fig.axes[0].lines) >= 2
    rec = {"width": 64, "k": 4, "linear_percent": 80.0, "nonlinear_percent": 30.0,
           "r2_percent_linear": 70.0, "r2_percent_nonlinear": 20.0, "norm_percent_linear": 75.0,
           "norm_percent_nonlinear": 25.0, "n_predictions": 100}  # fmt: skip
    table = {
        "width_sweep": ["a", "b"],
        "k_sweep": ["a"],
        "saes": {"a": rec, "b": {**rec, "width": 128}},
    }
    assert len(plot_downstream_ce(table).axes) == 2
    pursuit = [
        {"width": w, "k": 4, "n_tokens": 10, "l0_mean": 4.0, "encoder_fvu": f + 0.1,
         "pursuit_fvu": f, "encoder_nonlinear_error_fvu": 0.1, "pursuit_nonlinear_error_fvu": 0.12}
        for w, f in ((64, 0.5), (128, 0.4), (256, 0.33))
    ]  # fmt: skip
    from saelab.darkmatter.scaling import fit_power_law, pursuit_breakdown

    fit = fit_power_law([r["width"] for r in pursuit], [r["pursuit_fvu"] for r in pursuit])
    breakdown = json.loads(json.dumps(pursuit_breakdown(pursuit, pursuit[:2]), default=list))
    # the fit's curve on the figure's grid, by the power law's own formula
    grid = np.asarray(breakdown["grid"])
    assert np.allclose(breakdown["fit_curve"], fit.c + fit.a * grid**-fit.m)
    assert grid[0] == min(r["width"] for r in pursuit)
    assert grid[-1] == pytest.approx(10 * max(r["width"] for r in pursuit))
    assert [r["width"] for r in breakdown["width_records"]] == sorted(r["width"] for r in pursuit)
    assert pursuit_breakdown(pursuit, pursuit[:1])["k_records"] is None
    fig = plot_pursuit_breakdown(breakdown)
    assert len(fig.axes) == 2
    assert any("fit" in text.get_text() for text in fig.axes[0].get_legend().get_texts())
    comp = {
        "sae": "s",
        "r2": {"nonlinear": {"res": 0.1, "mlp": 0.05}, "error": {"res": 0.4, "mlp": 0.3}},
    }
    assert len(plot_components(comp).axes) == 2
