"""Bootstrap intervals (saelab.stats) against scipy.stats.bootstrap on the same data and seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from saelab.stats import (
    bootstrap_indices,
    bootstrap_sums,
    check_bootstrap_options,
    percentile_interval,
    ratio_score,
)


def _contexts(n=40, seed=0):
    rng = np.random.default_rng(seed)
    n_pred = rng.integers(100, 128, n).astype(float)
    clean = n_pred * rng.gamma(20, 0.15, n)
    zero = clean + n_pred * rng.gamma(4, 0.25, n)
    sae = clean + (zero - clean) * rng.uniform(0.02, 0.2, n)
    return n_pred, clean, zero, sae


@pytest.mark.parametrize("seed", [0, 11])
def test_paired_ratio_interval_equals_scipy_percentile_bootstrap(seed):
    n_pred, clean, zero, sae = _contexts()
    ours = bootstrap_sums(
        {"n": n_pred, "clean": clean, "zero": zero, "sae": sae},
        {
            "score": lambda s: ratio_score(s["zero"], s["sae"], s["clean"]),
            "ce_sae": lambda s: s["sae"] / s["n"],
        },
        n_resamples=999,
        seed=seed,
    )

    def score(c, z, s, axis=-1):
        return ratio_score(z.sum(axis), s.sum(axis), c.sum(axis))

    def mean_ce(n, s, axis=-1):
        return s.sum(axis) / n.sum(axis)

    common = {"paired": True, "vectorized": True, "method": "percentile", "n_resamples": 999}
    ref = stats.bootstrap((clean, zero, sae), score, rng=np.random.default_rng(seed), **common)
    assert [ours["score"].low, ours["score"].high] == pytest.approx(
        list(ref.confidence_interval), rel=1e-12
    )
    ref = stats.bootstrap((n_pred, sae), mean_ce, rng=np.random.default_rng(seed), **common)
    assert [ours["ce_sae"].low, ours["ce_sae"].high] == pytest.approx(
        list(ref.confidence_interval), rel=1e-12
    )
    assert ours["score"].n_units == 40 and ours["score"].level == 0.95


def test_interval_covers_the_truth_about_95_percent():
    """Coverage of the mean of a skewed distribution over 300 samples of 60 units."""
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(300):
        x = rng.gamma(2.0, 1.0, 60)  # true mean 2
        iv = bootstrap_sums(
            {"x": x, "n": np.ones(60)}, {"m": lambda s: s["x"] / s["n"]}, n_resamples=400, seed=i
        )["m"]
        hits += iv.low <= 2.0 <= iv.high
    assert 0.89 <= hits / 300 <= 0.99


def test_bad_options_and_degenerate_inputs():
    with pytest.raises(ValueError, match="n_resamples 10"):
        check_bootstrap_options(10, 0.95)
    with pytest.raises(ValueError, match="level 95"):
        check_bootstrap_options(1000, 95)
    with pytest.raises(ValueError, match="at least 2 units"):
        bootstrap_indices(1, 100, 0)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_sums({"a": [1, 2], "b": [1, 2, 3]}, {"s": lambda s: s["a"]})
    assert np.isnan(ratio_score(1.0, 0.5, 1.0))
    assert np.isnan(percentile_interval(np.array([1.0, np.nan, 2.0]))[0])
