"""saelab.metrics: the three FVU definitions by hand, the streaming accumulator against the
one-shot functions and sklearn's R² formulas, and each former copy (training batch FVU, the error SAEs' loss,
the noise simulation, the dark-matter numpy FVU, the trainer's held-out sums) against it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saelab.metrics import (
    FVU_DEFINITIONS,
    FVUAccumulator,
    fvu,
    fvu_dim_centred,
    fvu_dim_centred_np,
    fvu_element_global,
    fvu_key,
    fvu_mean_r2,
)

# y = [[1, 0], [3, 4]], ŷ = [[1, 1], [2, 4]]: errors (0, -1), (1, 0); SSE = 1 per dimension.
Y = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
Y_HAT = torch.tensor([[1.0, 1.0], [2.0, 4.0]], dtype=torch.float64)


def test_fvu_definitions_by_hand():
    # element-global: MSE = 2/4 = 0.5; elements {1,0,3,4} have mean 2, SS = 1+4+1+4 = 10,
    # unbiased variance 10/3 -> 0.5 / (10/3) = 0.15
    assert float(fvu_element_global(Y, Y_HAT)) == pytest.approx(0.15)
    # dim-centred: SST = (1-2)²+(3-2)² = 2 and (0-2)²+(4-2)² = 8 -> 2 / 10 = 0.2
    assert float(fvu_dim_centred(Y, Y_HAT)) == pytest.approx(0.2)
    # mean R²: SSE_d/SST_d = 1/2 and 1/8 -> mean 0.3125
    assert float(fvu_mean_r2(Y, Y_HAT)) == pytest.approx(0.3125)
    assert float(fvu(Y, Y_HAT)) == pytest.approx(0.2)  # the documented default
    for name, func in FVU_DEFINITIONS.items():
        assert float(fvu(Y, Y_HAT, name)) == float(func(Y, Y_HAT))
    with pytest.raises(ValueError, match=r"unknown FVU definition 'r2'.*dim_centred"):
        fvu(Y, Y_HAT, "r2")
    with pytest.raises(ValueError, match=r"unknown FVU definition 'centered'"):
        fvu_key("centered")


def _r2_score(y, y_hat, multioutput="uniform_average"):
    """sklearn.metrics.r2_score's formulas (sklearn is not a dependency): per output
    1 - SSE_j / SST_j, averaged uniformly or weighted by SST_j."""
    y, y_hat = y.reshape(len(y), -1), y_hat.reshape(len(y), -1)
    sse = ((y - y_hat) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    r2 = 1 - sse / sst
    return float(np.average(r2, weights=sst if multioutput == "variance_weighted" else None))


def test_definitions_against_sklearns_r2():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 5)) * [1, 2, 3, 4, 5] + [5, 0, -5, 1, 9]
    y_hat = y + rng.normal(size=y.shape) * 0.4
    t, t_hat = torch.from_numpy(y), torch.from_numpy(y_hat)
    # mean_r2 is 1 - the uniform-average R²; dim_centred 1 - the variance-weighted R²
    assert float(fvu_mean_r2(t, t_hat)) == pytest.approx(1 - _r2_score(y, y_hat), rel=1e-10)
    weighted = _r2_score(y, y_hat, multioutput="variance_weighted")
    assert float(fvu_dim_centred(t, t_hat)) == pytest.approx(1 - weighted, rel=1e-10)
    # element_global: the R² of the flattened elements, times (N·d - 1)/(N·d) (unbiased var)
    n = y.size
    flat = 1 - _r2_score(y.ravel(), y_hat.ravel())
    assert float(fvu_element_global(t, t_hat)) == pytest.approx(flat * (n - 1) / n, rel=1e-10)


def test_mean_r2_skips_constant_dimensions():
    y = torch.cat([Y, torch.full((2, 1), 5.0, dtype=torch.float64)], 1)
    y_hat = torch.cat([Y_HAT, torch.full((2, 1), 4.0, dtype=torch.float64)], 1)
    assert float(fvu_mean_r2(y, y_hat)) == pytest.approx(0.3125)


def test_streaming_accumulator_equals_one_shot():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(1000, 16, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 16)
    y[:, 3] += 1000.0  # a large mean: naive sums of squares would cancel
    y_hat = y + 0.3 * torch.randn(1000, 16, generator=gen, dtype=torch.float64)
    acc = FVUAccumulator()
    for lo, hi in [(0, 1), (1, 250), (250, 251), (251, 800), (800, 1000)]:
        acc.update(y[lo:hi], y_hat[lo:hi])
    for name, func in FVU_DEFINITIONS.items():
        assert acc.result(name) == pytest.approx(float(func(y, y_hat)), rel=1e-9)
    assert acc.results() == {fvu_key(name): acc.result(name) for name in FVU_DEFINITIONS}
    assert set(acc.results()) == {"fvu_element_global", "fvu_dim_centred", "fvu_mean_r2"}
    assert acc.mse() == pytest.approx(float((y - y_hat).pow(2).mean()), rel=1e-12)


def test_floor_only_clamps_the_denominator():
    y = torch.ones(4, 3)
    assert float(fvu_element_global(y, y + 1, floor=1e-8)) == pytest.approx(1e8)
    assert float(fvu_dim_centred(y, y + 1, floor=1e-12)) == pytest.approx(12 / 1e-12)
    assert not math.isfinite(float(fvu_dim_centred(y, y + 1)))
    t = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    assert float(fvu_element_global(t, 0.5 * t, floor=1e-8)) == float(
        fvu_element_global(t, 0.5 * t)
    )


def test_numpy_dim_centred_equals_the_torch_one():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4)) * [1, 2, 3, 4] + [5, 0, -5, 1]
    recon = x + rng.normal(size=x.shape) * 0.5
    expected = float(fvu_dim_centred(torch.from_numpy(x), torch.from_numpy(recon)))
    assert math.isclose(fvu_dim_centred_np(x, recon), expected, rel_tol=1e-10)
    # hand-computed: per-dimension centring, not one global mean
    tiny = np.array([[0.0, 10.0], [2.0, 14.0]])
    assert math.isclose(fvu_dim_centred_np(tiny, tiny + 1), 4 / (2 + 8))


def test_error_sae_loss_is_the_dim_centred_fvu():
    from saelab.training.loop import batch_fvu

    target = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    # SSE 1 over SST 2 + 2 (per-dimension means 1 and 2)
    assert float(batch_fvu(target, torch.tensor([[0.0, 1.0], [2.0, 2.0]]))) == pytest.approx(0.25)
    out = torch.randn(2, 2, requires_grad=True)
    batch_fvu(target, out).backward()  # a loss: differentiable
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_training_batch_fvu_is_element_global():
    from saelab.saes import SAEConfig, build_sae

    sae = build_sae(SAEConfig(arch="topk", d_in=6, width=12, k=2, hook_name="h", seed=0))
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(2))
    out = sae(x)
    y, r = x.double(), out.output.detach().double()
    hand = (y - r).pow(2).mean() / y.var()  # seed 001's compute_fvu, without its 1e-8
    assert float(out.fvu) == pytest.approx(float(hand), rel=1e-5)
