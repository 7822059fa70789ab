"""Tests of ``saelab.toy.hierarchy``, moved from tests/test_toy.py.

Notes shared with the other tests moved from tests/test_toy.py: ``tests/toy/__init__.py``."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.toy import (
    HierarchyConfig,
    ToyHierarchy,
    default_group_sizes,
)


def _within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """``observed`` is a Bernoulli(p) rate over n draws, within ``sigmas`` binomial SEs."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ ground truth
def test_generator_hierarchy_and_rates():
    cfg = HierarchyConfig(child_weights=[4, 2, 1, 1], parent_prob=0.3, extra_prob=0.1, seed=3)
    toy = ToyHierarchy(cfg)
    n = 200_000
    batch = toy.sample(n, generator=torch.Generator().manual_seed(0))
    active = batch.active
    assert active.shape == (n, cfg.n_features) and active.dtype == torch.bool
    for p in range(cfg.n_parents):
        parent_on = active[:, toy.parents[p]]
        n_children_on = active[:, toy.children[p]].sum(1)
        # exactly one child whenever the parent fires, and never a child without it
        assert torch.equal(n_children_on, parent_on.long())
        assert _within(parent_on.float().mean().item(), cfg.parent_prob, n)
        n_parent = int(parent_on.sum())
        for j, prob in enumerate(cfg.child_probs):
            rate = active[parent_on, toy.children[p, j]].float().mean().item()
            assert _within(rate, prob, n_parent), (p, j, rate, prob)
    for e in toy.extras:
        assert _within(active[:, e].float().mean().item(), cfg.extra_prob, n)
    # children of different parents and the extras are independent of a given parent
    both = (active[:, 0] & active[:, 1]).float().mean().item()
    assert _within(both, cfg.parent_prob**2, n)
    assert int(toy.parent_of[toy.children[2, 1]]) == 2 and int(toy.parent_of[0]) == -1


def test_generator_values_and_directions():
    cfg = HierarchyConfig(magnitude_noise=0.2, seed=1)
    toy = ToyHierarchy(cfg)
    batch = toy.sample(20_000)
    assert torch.allclose(toy.directions @ toy.directions.T, torch.eye(cfg.n_features), atol=1e-5)
    assert torch.allclose(batch.x, batch.values @ toy.directions, atol=1e-6)
    assert torch.all(batch.values[~batch.active] == 0)
    mean = toy.mean_magnitudes.expand_as(batch.values)[batch.active]
    ratio = batch.values[batch.active] / mean
    assert ratio.min() >= 1 - cfg.magnitude_noise and ratio.max() <= 1 + cfg.magnitude_noise
    assert toy.mean_magnitudes[toy.extras[0]] == cfg.extra_magnitude
    # seeded sampling is reproducible; the toy's own stream advances
    again = toy.sample(100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.x, toy.sample(100, generator=torch.Generator().manual_seed(5)).x)
    assert not torch.equal(toy.sample(100).x, toy.sample(100).x)
    # random (non-orthogonal) directions: unit norm, overlapping
    rand = ToyHierarchy(HierarchyConfig(orthogonal=False, d_model=16, seed=1))
    assert torch.allclose(rand.directions.norm(dim=1), torch.ones(rand.n_features), atol=1e-5)
    off_diag = (rand.directions @ rand.directions.T).fill_diagonal_(0)
    assert off_diag.abs().max() > 0.1
    assert len(toy.feature_names()) == cfg.n_features and toy.feature_names()[4] == "p0c0"


def test_config_validation():
    with pytest.raises(ValueError, match="d_model >= n_features"):
        HierarchyConfig(d_model=8)
    with pytest.raises(ValueError, match="child_weights"):
        HierarchyConfig(child_weights=[1, 2])
    with pytest.raises(ValueError, match="parent_prob"):
        HierarchyConfig(parent_prob=1.5)
    assert default_group_sizes(HierarchyConfig(), 28) == [4, 24]
    assert HierarchyConfig().expected_l0() == pytest.approx(3.0)
