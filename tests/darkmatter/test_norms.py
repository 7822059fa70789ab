"""Tests of ``saelab.darkmatter.norms``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saelab.darkmatter.norms import (
    baseline_r2,
    losses_for_rows,
    norm_prediction_r2,
    running_mean,
    token_mean_prediction,
)
from saelab.darkmatter.regression import (
    fit_regression,
    shuffled_split,
)
from tests.darkmatter.helpers import make_info

torch.set_num_threads(1)


def test_norm_prediction_and_baselines_on_a_planted_problem():
    rng = np.random.default_rng(6)
    token_ids = rng.integers(0, 5, size=2000)
    x = rng.normal(size=(2000, 4)) + 10
    error = rng.normal(size=(2000, 4)) * 0.1
    y = x @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.01 * rng.normal(size=2000)
    info = make_info(x, error, error_sq_norm=y, token_ids=token_ids)
    split = shuffled_split(2000, seed=0)
    reg = fit_regression(info)
    r2 = norm_prediction_r2(info, reg, split)
    assert r2["sae_error"] > 0.99  # the planted linear norm
    loss = np.where(np.arange(2000) < 1000, rng.normal(size=2000), np.nan)
    base = baseline_r2(info, split, loss)
    assert base["x_affine"] > 0.99 and abs(base["l0"]) < 1e-9 + 0.01
    assert abs(base["model_loss"]) < 0.05 and base["token_id"] < 0.05
    assert token_mean_prediction(np.array([0, 0, 1, 2]), np.array([1.0, 3.0, 5.0, 7.0]),
                                 np.array([0, 1, 2])).tolist() == [2.0, 2.0, 5.0, 3.0]  # fmt: skip


def test_token_id_baseline_is_held_out_by_default_and_in_sample_only_when_asked():
    """Pure-noise norms over 500 ids of ~4 tokens each: per-id means fitted on the same tokens
    'explain' a quarter of the variance (in-sample, the original), nothing on held-out tokens.
    The figure's legend names which one it drew."""
    from saelab.plots.darkmatter import plot_baselines

    rng = np.random.default_rng(3)
    token_ids = rng.integers(0, 500, size=2000)
    x = rng.normal(size=(2000, 4))
    y = rng.normal(size=2000) ** 2
    info = make_info(x, rng.normal(size=(2000, 4)), error_sq_norm=y, token_ids=token_ids)
    split = shuffled_split(2000, seed=0)
    held = baseline_r2(info, split)["token_id"]
    in_sample = baseline_r2(info, split, token_id_in_sample=True)["token_id"]
    test = split.test_idx
    by_hand = token_mean_prediction(token_ids, y, split.train_idx)[test]
    expected = 1 - np.sum((y[test] - by_hand) ** 2) / np.sum((y[test] - y[test].mean()) ** 2)
    assert held == pytest.approx(expected, rel=1e-6) and held < 0.02  # float32 norms
    assert in_sample > 0.2
    saes = [{"name": "a", "layer": 0, "r2": {"x_affine": 0.5, "token_id": held}},
            {"name": "b", "layer": 1, "r2": {"x_affine": 0.6, "token_id": held}}]  # fmt: skip
    for flag, text in ((False, "held out"), (True, "IN-SAMPLE")):
        fig = plot_baselines({"saes": saes, "token_id_in_sample": flag})
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any("token id" in label and text in label for label in labels), labels


def test_losses_for_rows_and_running_mean():
    got = losses_for_rows(np.array([10, 11, 12]), np.array([1.0, 2.0, 3.0]), np.array([12, 5, 10]))
    assert got[0] == 3.0 and math.isnan(got[1]) and got[2] == 1.0
    assert np.allclose(running_mean(np.arange(5.0), 3), [1, 1, 2, 3, 3])
