"""Tests of ``saelab.seed001``, moved from tests/test_evaluate.py.

Notes shared with the other tests moved from tests/test_evaluate.py: ``tests/test_evaluate.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from saelab.evaluate import (
    SparseCodes,
)
from saelab.seed001 import (
    seed001_absorption_score,
    seed001_hierarchy,
    seed001_monosemanticity,
    seed001_splitting_score,
)

# ------------------------------------------------------------------------------------ seed 001


def test_seed001_absorption_counts_near_parallel_rows():
    W = torch.tensor([[1.0, 0, 0], [0.999, 0.045, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.5, 0.5]])
    # cosines: (0,1) ≈ 0.999; (2,4) = (3,4) ≈ 0.707; (1,2) ≈ 0.045; the rest 0 or below 0.9
    for chunk in (1, 2, 2048):
        result = seed001_absorption_score(W, chunk_size=chunk, top_k=3)
        assert result.n_pairs == 10 and result.n_pairs_above == 1 and result.score == 0.1
        assert (result.top_pairs[0].i, result.top_pairs[0].j) == (0, 1)
        assert result.top_pairs[0].cosine == pytest.approx(0.999 / math.hypot(0.999, 0.045))
        assert {(p.i, p.j) for p in result.top_pairs[1:]} == {(2, 4), (3, 4)}


def codes_from_sets(active: list[set[int]], width: int) -> SparseCodes:
    dense = torch.zeros(len(active), width)
    for row, latents in enumerate(active):
        dense[row, list(latents)] = 1.0
    return SparseCodes.from_dense(dense)


def test_seed001_splitting_by_hand_and_against_dense():
    # latent 0 on tokens {0,1,2}, 1 on all 4, 2 on {0,3}, 3 on {1}: c01 = 3/4 is the only pair
    # above 0.5 (c12 = 2/4 is not strictly above) -> 1 of 6 pairs
    codes = codes_from_sets([{0, 1, 2}, {0, 1, 3}, {0, 1}, {1, 2}], 4)
    result = seed001_splitting_score(codes)
    assert (result.n_pairs_above, result.n_pairs) == (1, 6) and result.score == pytest.approx(1 / 6)
    gen = torch.Generator().manual_seed(0)
    dense = (torch.rand(200, 12, generator=gen) < torch.linspace(0.05, 0.95, 12)).float()
    co = dense.T @ dense / 200
    iu = torch.triu_indices(12, 12, offset=1)
    expected = int((co[iu[0], iu[1]] > 0.5).sum())
    assert expected > 0
    assert seed001_splitting_score(SparseCodes.from_dense(dense)).n_pairs_above == expected


def test_seed001_monosemanticity_matches_numpy_histogram_entropy():
    gen = np.random.default_rng(0)
    n, width = 400, 5
    dense = np.zeros((n, width))
    dense[:, 0] = gen.exponential(1.0, n)  # always active, spread out
    dense[gen.random(n) < 0.3, 1] = 2.5  # constant value on ~30% of tokens
    dense[:8, 2] = gen.random(8) + 0.1  # 8 activations: too few (≤ 10), entropy 0
    dense[:, 3] = np.where(gen.random(n) < 0.5, gen.gamma(2.0, 1.0, n), 0)
    codes = SparseCodes.from_dense(torch.from_numpy(dense))
    result = seed001_monosemanticity(codes)
    expected = []
    for i in range(width):
        values = dense[:, i][dense[:, i] > 0]
        freq = len(values) / n
        h = 0.0
        if len(values) > 10:
            hist, _ = np.histogram(values, bins=50, density=True)
            h = scipy.stats.entropy(hist + 1e-10)
        expected.append(((1 - freq) + 1 / (1 + h)) / 2)
    np.testing.assert_allclose(result.per_latent.numpy(), expected, rtol=1e-5)
    assert result.per_latent[4] == 1.0  # dead: ((1 - 0) + 1/(1 + 0)) / 2
    assert result.per_latent[2] == pytest.approx((1 - 8 / n + 1) / 2)
    assert result.mean == pytest.approx(np.mean(expected), rel=1e-5)


def test_seed001_hierarchy_by_hand():
    c = 1 / math.sqrt(2)
    W = torch.tensor([[1.0, 0, 0], [c, c, 0], [0, 1.0, 0], [0, 0, 1.0]])
    first, second = seed001_hierarchy(W, [(0, 2), (2, 4)], chunk_size=1)
    # group 0: |S - I| has off-diagonal c twice out of 4 entries; to group 1 only (c,c,0)·e1
    assert first.within == pytest.approx(c / 2)
    assert first.between_next == pytest.approx(c / 4)
    assert first.separation_ratio == pytest.approx(0.5)
    assert second.within == pytest.approx(0.0, abs=1e-7) and second.between_next is None
