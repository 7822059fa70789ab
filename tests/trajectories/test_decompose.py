"""Tests of ``saelab.trajectories.decompose``, moved from tests/test_trajectories.py.

Notes shared with the other tests moved from tests/test_trajectories.py:
``tests/trajectories/__init__.py``."""

from __future__ import annotations

import torch

from saelab.trajectories.decompose import (
    LayerWeights,
    layer_activations,
    layer_weights,
    query_evolution,
    source_contributions,
)
from tests.trajectories.helpers import _layer_caches


def test_decomposition_reproduces_resid_mid(hf_case):
    case, model = hf_case
    if case == "gpt2":
        assert (
            model.blocks[0].attn.b_O.abs().max() > 0.1
            and model.blocks[0].attn.b_V.abs().max() > 0.1
        )
    else:  # the Gemma features the decomposition must handle
        assert model.cfg.n_key_value_heads < model.cfg.n_heads
        assert model.cfg.use_normalization_before_and_after
    tokens, cache = _layer_caches(model)
    n = tokens.shape[1]
    assert n > 10
    for layer in range(model.cfg.n_layers):
        acts = layer_activations(cache, layer)
        weights = layer_weights(model, layer)
        contributions = source_contributions(acts, weights)
        # causal: no contribution from later tokens
        assert contributions[2, 3:].abs().max() == 0
        for query in range(n):
            evolution = query_evolution(acts, weights, contributions, query)
            assert evolution.steps.shape == (query + 2, model.cfg.d_model)
            torch.testing.assert_close(evolution.steps[0], acts.resid_pre[query])
            torch.testing.assert_close(
                evolution.steps[-1], acts.resid_mid[query], atol=1e-4, rtol=1e-4
            )
            assert evolution.relative_error < 1e-5
        # The attention output really matters here (else the check would prove little).
        assert (acts.resid_mid - acts.resid_pre).norm() > 0.1 * acts.resid_mid.norm()


def test_decomposition_misses_without_bias_or_post_norm(hf_case):
    """Leaving out b_O (GPT-2) or the post-attention norm (Gemma) breaks the self-check."""
    case, model = hf_case
    _, cache = _layer_caches(model)
    acts = layer_activations(cache, 1)
    weights = layer_weights(model, 1)
    if case == "gpt2":
        wrong = weights._replace(b_O=torch.zeros_like(weights.b_O))
    else:
        wrong = LayerWeights(weights.W_O, weights.b_O, None)
    query = acts.resid_pre.shape[0] - 1
    error = query_evolution(acts, wrong, source_contributions(acts, wrong), query).relative_error
    assert error > 1e-2
