"""Tests of ``saelab.darkmatter.pursuit``, moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.darkmatter.pursuit import _pursuit_batch, gradient_pursuit, pursuit_metrics

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------ pursuit


def reference_pursuit(x, D, b, target_l0):
    """The method text of §5.6 literally, one token at a time, dense weights, float64."""
    out = []
    for n in range(len(x)):
        s = x[n] - b
        w = torch.zeros(D.shape[0], dtype=torch.float64)
        for _ in range(int(target_l0[n])):
            r = s - w @ D
            g = D @ r
            support = w != 0
            support[int(g.argmax())] = True
            grad = torch.where(support, g, torch.zeros_like(g))
            c = grad @ D
            eta = (c @ r) / (c @ c) if (c @ c) > 0 else 0.0
            w = (w + eta * grad).clamp_min(0)
        out.append(w @ D + b)
    return torch.stack(out)


def test_pursuit_recovers_exactly_sparse_signal_from_orthogonal_dictionary():
    gen = torch.Generator().manual_seed(0)
    d, n, k = 16, 32, 4
    D = torch.linalg.qr(torch.randn(d, d, generator=gen))[0].T  # orthonormal rows
    weights = torch.zeros(n, d)
    for i in range(n):
        support = torch.randperm(d, generator=gen)[:k]
        weights[i, support] = torch.rand(k, generator=gen) + 0.5
    b_dec = torch.randn(d, generator=gen)
    x = weights @ D + b_dec
    result = gradient_pursuit(x, D, b_dec, torch.full((n,), k), batch_size=8, progress=False)
    assert torch.allclose(result.recon, x, atol=1e-5)
    assert (result.l0 == k).all()
    # one iteration fewer cannot be exact: the smallest weight is missing
    short = gradient_pursuit(x, D, b_dec, torch.full((n,), k - 1), progress=False)
    missing = (short.recon - x).norm(dim=1)
    smallest = weights.masked_fill(weights == 0, float("inf")).min(dim=1).values
    assert torch.allclose(missing, smallest, atol=1e-5)


def test_batched_pursuit_matches_the_literal_method_per_token():
    gen = torch.Generator().manual_seed(1)
    D = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    x = torch.randn(30, 10, generator=gen, dtype=torch.float64)
    b = 0.1 * torch.randn(10, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 9, (30,), generator=gen)
    r, l0 = _pursuit_batch(x - b, D, target)
    expected = reference_pursuit(x, D, b, target)
    assert torch.allclose(x - r, expected, atol=1e-10)
    assert (l0 <= target).all()
    zero = target == 0
    assert torch.allclose((x - r)[zero], b.expand(int(zero.sum()), -1))


def test_pursuit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="share d"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(6), torch.ones(3))
    with pytest.raises(ValueError, match="target_l0 has 2 entries for 3 tokens"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4), torch.ones(2))
    with pytest.raises(ValueError, match="b_dec"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3), torch.ones(3))


def test_pursuit_metrics_compare_like_with_like():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    perfect = pursuit_metrics(x, x * 0.5, x.copy())
    assert perfect["pursuit_fvu"] == pytest.approx(0.0, abs=1e-6)
    # x̂ = x/2: FVU = Σ(x/2)² / SST; its error x/2 is exactly linear in x, so adding it is exact
    sst = np.square(x - x.mean(0)).sum()
    assert perfect["encoder_fvu"] == pytest.approx(np.square(x / 2).sum() / sst, rel=1e-5)
    assert perfect["encoder_nonlinear_error_fvu"] == pytest.approx(0.0, abs=1e-6)
