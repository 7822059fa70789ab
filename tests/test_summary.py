"""results/summary.md (saelab.summary): every number with its interval or a reason, stamped."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from saelab.summary import (
    darkmatter_section,
    fisher_interval,
    git_commit,
    num,
    render_summary,
    sae_section,
    with_interval,
)


def test_fisher_interval_equals_scipy_pearsonr_confidence_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    result = stats.pearsonr(x, y)
    expected = result.confidence_interval(0.95)
    got = fisher_interval(float(result.statistic), 40)
    assert got == pytest.approx((expected.low, expected.high), rel=1e-10)
    assert fisher_interval(0.3, 3) is None and fisher_interval(None, 50) is None


def test_number_formatting():
    assert num(0.95234) == "0.952" and num(None) == "n/a" and num(float("nan")) == "n/a"
    assert with_interval(0.9, [0.8, 0.95]) == "0.900 [0.800, 0.950]"
    assert with_interval(0.9, None) == "0.900"


def _evaluation(score=0.9):
    return {
        "arch": "batchtopk", "fvu_dim_centred": 0.05, "l0": {"mean": 31.0}, "dead_fraction": 0.1,
        "n_tokens": 32768,
        "ce_recovered": {
            "ce_loss_score": score, "kl_sae": 0.7, "n_tokens": 4158, "bos_convention": "splice",
            "intervals": {
                "ce_loss_score": [score - 0.01, score + 0.01], "kl_sae": [0.65, 0.75],
                "_method": {"method": "percentile bootstrap over contexts", "level": 0.95,
                            "n_contexts": 33, "n_resamples": 2000, "seed": 0},
            },
            "other_convention": {"bos_convention": "clean", "ce_loss_score": 0.96,
                                 "intervals": {"ce_loss_score": [0.95, 0.97]}},
        },
        "first_letter_absorption": {"full_absorption_rate": 0.12, "mean_absorption_fraction": 0.2},
    }  # fmt: skip


def test_sae_section_prints_intervals_both_conventions_and_reasons():
    text = sae_section({"batchtopk": _evaluation()})
    assert "0.900 [0.890, 0.910]" in text and "0.700 [0.650, 0.750]" in text
    assert "0.960 [0.950, 0.970]" in text
    assert "BOS convention `splice`" in text and "`clean`" in text
    assert "4158 predictions" in text and "33 contexts" in text
    assert "no interval: computed once on the held-out tokens" in text


def test_darkmatter_section_fit_intervals_and_downstream():
    scaling = {
        "saes": [{"r2_vector": 0.5, "r2_norm": 0.9}, {"r2_vector": 0.7, "r2_norm": 0.92}],
        "curve_k": 32, "curve_widths": [256, 512], "curve_fvu": [0.1, 0.09],
        "curve_nonlinear_fvu": [0.04, 0.04],
        "power_law": {"c": 0.08, "a": 3.0, "m": 0.8, "c_ci": [0.07, 0.09], "a_ci": [1.0, 9.0],
                      "m_ci": [0.5, 1.1], "n_points": 5, "ci_method": "delta"},
        "breakdown_at_widest": {"width": 512, "absent_features": 0.01, "linear_error": 0.03,
                                "encoder_error": None, "nonlinear_error": 0.04},
    }  # fmt: skip
    record = {"width": 256, "k": 32, "linear_percent": 80.0, "nonlinear_percent": 30.0,
              "n_predictions": 4158,
              "intervals": {"linear_percent": [75.0, 85.0], "nonlinear_percent": [25.0, 35.0],
                            "_method": {"method": "percentile bootstrap over contexts",
                                        "level": 0.95, "n_contexts": 33, "n_resamples": 2000,
                                        "seed": 0}}}  # fmt: skip
    downstream = {"width_sweep": ["a"], "k_sweep": [], "saes": {"a": record}}
    baselines = {
        "token_id_in_sample": False,
        "saes": [
            {"r2": {"x_affine": 0.6, "token_id": 0.3}},
            {"r2": {"x_affine": 0.2, "token_id": 0.5}},
        ],
    }
    text = darkmatter_section(scaling, downstream, baselines)
    assert "c = 0.080 [0.070, 0.090]" in text and "m = 0.800 [0.500, 1.100]" in text
    assert "80.0 [75.0, 85.0] / 30.0 [25.0, 35.0]" in text
    assert "token id held out" in text and "x best at 1 of 2 SAEs" in text
    no_dof = {**scaling, "power_law": {**scaling["power_law"], "n_points": 3,
                                       "c_ci": [None, None], "a_ci": [None, None],
                                       "m_ci": [None, None]}}  # fmt: skip
    assert "3 widths leave the 3-parameter fit no degrees of freedom" in darkmatter_section(no_dof)
    # every table row has an interval or says why not
    for row in [r for r in text.splitlines() if r.startswith("| ") and "quantity" not in r]:
        assert re.search(r"\[|no interval|interval", row), row


def test_render_summary_is_stamped(tmp_path):
    page = render_summary(["## A\n\nx"], commit="abc", command="snakemake --cores all", model="m")
    assert "commit: `abc`" in page and "command: `snakemake --cores all`" in page
    assert git_commit(tmp_path).startswith("unknown")
