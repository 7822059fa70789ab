"""Tests of ``saelab.darkmatter.regression``, moved from tests/test_darkmatter.py and
tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter.py and
tests/test_darkmatter_interventions.py: ``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from saelab.darkmatter.regression import (
    ErrorParts,
    fit_regression,
    load_regression,
    lstsq,
    r2_mean_over_dims,
    shuffled_split,
    write_regression,
)
from saelab.metrics import fvu_dim_centred_np
from saelab.training.loop import batch_fvu
from tests.darkmatter.helpers import make_info

torch.set_num_threads(1)


# ------------------------------------------------------------------ regression
def test_lstsq_recovers_a_planted_linear_map_with_and_without_intercept():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    W = rng.normal(size=(6, 4))
    assert np.allclose(lstsq(X, X @ W), W, atol=1e-10)
    b = rng.normal(size=4)
    Wb = lstsq(X, X @ W + b, intercept=True)
    assert np.allclose(Wb[:-1], W, atol=1e-10) and np.allclose(Wb[-1], b, atol=1e-10)


def test_r2_is_near_one_for_a_planted_linear_error_and_near_zero_for_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8)) + 3.0  # a constant component, as in an LM's residual
    M = rng.normal(size=(8, 8)) * 0.3
    w = rng.normal(size=8)
    planted = make_info(x, x @ M + 1e-3 * rng.normal(size=x.shape), error_sq_norm=x @ w)
    reg = fit_regression(planted, seed=0)
    assert reg.metrics["r2_vector"] > 0.999 and reg.metrics["r2_norm"] > 0.999
    assert np.allclose(reg.W_vec, M, atol=1e-3)
    noise = make_info(x, rng.normal(size=x.shape))
    reg = fit_regression(noise, seed=0, norm_intercept=True)
    assert abs(reg.metrics["r2_vector"]) < 0.02 and abs(reg.metrics["r2_norm"]) < 0.02


def test_linear_plus_nonlinear_error_is_the_error_and_fvus_add_up():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 5))
    info = make_info(x, 0.5 * x + rng.normal(size=x.shape))
    reg = fit_regression(info, seed=3)
    error, lin, nonlin = ErrorParts.of_info(info, reg)
    assert error is info.error and np.allclose(lin + nonlin, info.error, atol=1e-5)
    # x W computed in float64 from the stored W_vec, the same from the npz's arrays or W_vec
    assert np.array_equal(
        lin, (info.x.astype(np.float64) @ reg.W_vec.astype(np.float64)).astype(np.float32)
    )
    assert np.array_equal(ErrorParts.of_info(info, {"W_vec": reg.W_vec}).linear, lin)
    assert np.array_equal(ErrorParts.of_info(info, reg.W_vec).nonlinear, nonlin)
    m = reg.metrics
    assert math.isclose(m["linear_error_fvu"] + m["nonlinear_error_fvu"], m["fvu"], rel_tol=1e-9)
    # FVU(x, x̂ + x W) is the nonlinear error's share of the variance
    assert math.isclose(
        m["nonlinear_error_fvu"], fvu_dim_centred_np(info.x, info.x_hat + lin), rel_tol=1e-6
    )
    assert 0 < m["nonlinear_error_fvu"] < m["fvu"]


def test_r2_mean_over_dims_and_the_split():
    Y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0]])
    pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    # column 0 perfect (R² 1); column 1: SSE 2, SST 8 -> 0.75
    assert math.isclose(r2_mean_over_dims(Y, pred), (1 + 0.75) / 2)
    split = shuffled_split(10, seed=5, train_fraction=0.5)
    assert sorted(np.concatenate(split)) == list(range(10)) and len(split.train_idx) == 5
    assert np.array_equal(split.train_idx, shuffled_split(10, seed=5).train_idx)
    with pytest.raises(ValueError, match="train_fraction"):
        shuffled_split(10, train_fraction=1.0)


def test_regression_files_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 3))
    reg = fit_regression(make_info(x, x * 0.1), norm_intercept=True)
    write_regression(reg, tmp_path / "regression.npz", tmp_path / "regression.json")
    back = load_regression(tmp_path / "regression.npz")
    assert np.array_equal(back.W_vec, reg.W_vec) and back.metrics["r2_vector"] == pytest.approx(
        reg.metrics["r2_vector"]
    )
    assert {"r2_vector", "r2_norm", "fvu", "linear_error_fvu", "nonlinear_error_fvu"} <= set(
        json.loads((tmp_path / "regression.json").read_text())
    )
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------------------------ train on error


def test_error_parts_and_batch_fvu():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    W = torch.tensor([[0.0, 0.0], [0.0, 0.5]])
    parts = ErrorParts.of(x, x_hat, W)
    assert torch.equal(parts.error, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(parts.linear, torch.tensor([[0.0, 1.0], [0.0, 2.0]]))
    assert torch.allclose(parts.nonlinear, torch.tensor([[0.0, 0.0], [1.0, -2.0]]))
    target = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # Σ error² = 2, Σ about the batch mean (1, 1) = 4
    assert float(batch_fvu(target, torch.tensor([[0.0, 1.0], [2.0, 1.0]]))) == pytest.approx(0.5)
