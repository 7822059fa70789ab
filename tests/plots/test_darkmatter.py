"""Tests of ``saelab.plots.darkmatter``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import json

import numpy as np
import torch

from saelab.darkmatter.noise import NoiseConfig, simulate
from saelab.darkmatter.norms import (
    running_mean,
)
from saelab.darkmatter.per_token import cross_width_predictability
from saelab.darkmatter.regression import (
    fit_regression,
)
from saelab.darkmatter.scaling import (
    scaling_series,
    scaling_summary,
)
from tests.darkmatter.helpers import make_info

torch.set_num_threads(1)


def test_every_figure_draws_from_small_inputs(tmp_path):
    from saelab.darkmatter.per_token import error_norms
    from saelab.plots import darkmatter as plots
    from saelab.plots import darkmatter_tokens as tokens

    points = [{"name": f"w{w}-k{k}", "width": w, "k": k} for w in (64, 128, 256) for k in (4, 8)]
    rows = [{**p, "l0_mean": p["k"], "fvu": 1 / p["width"] ** 0.3, "nonlinear_error_fvu": 0.05,
             "r2_vector": 0.5, "r2_norm": 0.6} for p in points]  # fmt: skip
    summary = json.loads(json.dumps(scaling_summary(rows, None, {
        r["name"]: {"pursuit_fvu": 0.04} for r in rows
    }), default=float).replace("NaN", "null"))  # fmt: skip
    series = scaling_series(summary)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    infos = [make_info(x, rng.normal(size=x.shape) * s) for s in (1.0, 0.8, 0.6)]
    norms = error_norms(infos, [fit_regression(i) for i in infos])
    cross = cross_width_predictability(norms)
    per_token = {"widths": np.array([64, 128, 256]), **norms._asdict(), **cross._asdict()}
    norm_r2 = {"r2": {"a": dict.fromkeys(["x", "sae", "sae_plus_nonlinear", "sae_error",
                                          "linear_error", "nonlinear_error"], 0.9)}}  # fmt: skip
    baselines = {"saes": [{"name": "l0", "layer": 0, "r2": {"x_affine": 0.9, "l0": 0.1}},
                          {"name": "l1", "layer": 1, "r2": {"x_affine": 0.8, "l0": 0.2}}]}  # fmt: skip
    probe = {"sae": "toy", "probe_r2": 0.9, "correlation": 0.5,
             "probe_dot": rng.normal(size=50), "mean_active": np.linspace(5, 1, 50)}  # fmt: skip
    probe |= {"running_mean": running_mean(probe["probe_dot"][:40], 10), "running_window": 10}
    cfg = NoiseConfig(ablate_percents=[0, 10], grid=[0.0, 1.0])
    x_t = torch.from_numpy(x).float()
    points_noise = simulate(x_t, torch.rand(300, 6), torch.randn(6, 4), torch.zeros(4),
                            torch.rand(6), cfg)  # fmt: skip
    noise = {"sae": "toy", "config": vars(cfg), "points": [p._asdict() | {
        "linear_estimate": p.linear_estimate, "nonlinear_estimate": p.nonlinear_estimate}
        for p in points_noise]}  # fmt: skip
    figures = [
        plots.plot_scaling_breakdown(summary, series), plots.plot_power_law_fit(summary, series),
        plots.plot_error_r2_contours(summary, series),
        plots.plot_nonlinear_fvu_contour(summary, series),
        tokens.plot_token_trace(per_token, 0, 50), tokens.plot_cross_width(per_token),
        tokens.plot_linear_nonlinear_trace(per_token), tokens.plot_nonlinear_extra(per_token),
        plots.plot_norm_violin(norm_r2), plots.plot_baselines(baselines),
        plots.plot_probe(probe), plots.plot_noise(noise),
    ]  # fmt: skip
    from saelab.plots.common import save_figure

    for i, fig in enumerate(figures):
        save_figure(fig, tmp_path / f"{i}.png", dpi=30)
        assert (tmp_path / f"{i}.png").stat().st_size > 500
