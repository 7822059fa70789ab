"""End-to-end tests (they run Snakemake) moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from saelab.darkmatter.info import (
    load_sae_info,
)

torch.set_num_threads(1)

FIGURES = [
    "fig01_scaling_breakdown.png",
    "fig02_power_law_fit.png",
    "fig03_error_r2_contours.png",
    "fig04_per_token_error_norms.png",
    "fig05_per_token_predictability.png",
    "fig06_per_token_linear_nonlinear.png",
    "fig07_norm_prediction_violin.png",
    "fig11_nonlinear_fvu_contour.png",
    "fig12_nonlinear_norm_extra_variance.png",
    "fig13_norm_prediction_baselines.png",
    "fig14_latents_vs_norm_probe.png",
    "fig15_noise_simulation.png",
    "table01_noise_correlations.csv",
]


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_micro_run_darkmatter(micro_run):
    plots = micro_run / "plots" / "darkmatter"
    for name in FIGURES:
        assert (
            (plots / name).stat().st_size > 1000
            if name.endswith(".png")
            else (plots / name).exists()
        )
    analysis = next((micro_run / "data" / "analysis" / "darkmatter").glob("*/darkmatter"))
    scaling = json.loads((analysis / "scaling.json").read_text())
    assert scaling["fvu_falls_with_width"], scaling["curve_fvu"]
    assert all(b < a for a, b in zip(scaling["curve_fvu"], scaling["curve_fvu"][1:], strict=False))
    for row in scaling["saes"]:
        assert 0 < row["r2_norm"] < 1, row
        assert 0 < row["nonlinear_error_fvu"] < row["fvu"] < 1, row
    with open(plots / "table01_noise_correlations.csv") as handle:
        table = {row["noise"]: row for row in csv.DictReader(handle)}
    assert float(table["Activation Noise"]["Linear Error"]) > 0
    info = load_sae_info(
        next(micro_run.glob("data/analysis/darkmatter/*/*/darkmatter-*/info.zarr"))
    )
    assert info.position.min() >= 1 and len(info.x) > 100
