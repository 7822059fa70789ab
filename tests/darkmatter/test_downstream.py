"""Tests of ``saelab.darkmatter.downstream``, moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.darkmatter.downstream import (
    DownstreamContexts,
    downstream_record,
    percent_recovered,
    r2_percent,
    reconstruction_percentages,
    splice_variants,
    spliced_ce,
)
from saelab.darkmatter.regression import ErrorParts

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ downstream


def test_percentages_by_hand():
    assert percent_recovered(4.0, 3.5, 3.0) == pytest.approx(50.0)
    assert percent_recovered(4.0, 4.5, 3.0) == pytest.approx(-50.0)
    assert np.isnan(percent_recovered(3.0, 3.0, 3.0))
    assert r2_percent(0.6, 0.9) == pytest.approx(75.0)


def test_reconstruction_percentages_of_an_exactly_linear_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=gen)
    A = torch.randn(8, 8, generator=gen) * 0.3
    x_hat = x @ A
    W = torch.eye(8) - A  # x W = x − x̂ exactly
    parts = ErrorParts.of(x, x_hat, W)
    variants = splice_variants(x_hat, parts)
    assert torch.allclose(variants["sae_linear"], x, atol=1e-5)
    assert torch.allclose(variants["sae_nonlinear"], x_hat, atol=1e-5)
    out = reconstruction_percentages(x, variants, parts)
    assert out["r2_sae_linear"] == pytest.approx(1.0, abs=1e-5)
    assert out["r2_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    assert out["r2_percent_nonlinear"] == pytest.approx(0.0, abs=1e-3)
    assert out["norm_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    assert out["norm_percent_nonlinear"] == pytest.approx(0.0, abs=1e-3)


def _contexts(model, hook, tokens, window):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(*tokens.shape, -1)
    loss_mask = window[:, :-1].clone()
    index = np.arange(int(window.sum()))
    return DownstreamContexts(tokens, acts, window, loss_mask, index), acts[window]


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
)
def test_spliced_ce_matches_the_models_own_loss(tiny_model, hook):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 60, (3, 16), generator=gen)
    window = torch.zeros(3, 16, dtype=torch.bool)
    window[:, 4:12] = True
    contexts, x = _contexts(tiny_model, hook, tokens, window)
    with torch.no_grad():
        per_token = tiny_model(tokens, return_type="loss", loss_per_token=True)
    expected = float(per_token[window[:, :-1]].mean())
    ce = spliced_ce(tiny_model, contexts, hook, {"same": x, "zero": torch.zeros_like(x)}, 2)
    assert ce["clean"] == pytest.approx(expected, rel=1e-5)
    assert ce["same"] == pytest.approx(expected, rel=1e-5)
    assert abs(ce["zero"] - expected) > 1e-3  # the splice reaches the loss


def test_downstream_record_with_an_exactly_linear_error(tiny_model):
    """x̂ = x/2 and W = I/2: x̂ + x W = x recovers 100 % of the CE, x̂ + nonlinear = x̂ none."""
    hook, ctx, n_ctx = "blocks.1.hook_resid_pre", 16, 3
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, 60, (n_ctx, ctx), generator=gen)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(n_ctx * ctx, -1).numpy()
    special = np.zeros(n_ctx * ctx, dtype=bool)
    special[ctx + 9] = True  # a special target: its prediction (position 8) must not count
    group = {"tokens": tokens.reshape(-1).numpy(), "special_mask": special, hook: acts}
    rows = np.array(
        [c * ctx + p for c in range(n_ctx) for p in range(2, 14) if c * ctx + p != ctx + 9]
    )
    x = acts[rows]
    info = SimpleNamespace(
        x=x, x_hat=x / 2, rows=rows, position=rows % ctx,
        attrs={"context_len": ctx, "hook": hook, "sae": "half", "width": 4, "k": 1},
    )  # fmt: skip
    regression = SimpleNamespace(W_vec=np.eye(x.shape[1], dtype=np.float32) / 2)
    clean_ce = {}
    record = downstream_record(tiny_model, info, regression, group, 2, 1, clean_ce)
    assert record["n_contexts"] == 2 and record["n_spliced"] == 12 + 11
    assert record["n_predictions"] == 12 + 10  # position 8 of context 1 predicts a special token
    assert record["ce_sae_linear"] == pytest.approx(record["ce_clean"], rel=1e-5)
    assert record["linear_percent"] == pytest.approx(100.0, abs=1e-3)
    assert record["ce_sae_nonlinear"] == pytest.approx(record["ce_sae"], rel=1e-5)
    assert record["nonlinear_percent"] == pytest.approx(0.0, abs=1e-3)
    assert record["norm_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    again = downstream_record(tiny_model, info, regression, group, 2, 1, clean_ce)
    assert len(clean_ce) == 1 and again["ce_clean"] == record["ce_clean"]


def test_downstream_intervals_are_scipy_paired_percentile_bootstrap(tiny_model):
    """Reference: per-context CE from TransformerLens's own loss with x̂ = 0.6 x and
    x̂ + 0.2 x spliced at the window, and scipy.stats.bootstrap (paired, percentile, same seed)
    of the linear percentage recovered."""
    from scipy import stats

    hook, ctx, n_ctx = "blocks.1.hook_resid_pre", 16, 6
    tokens = torch.randint(1, 60, (n_ctx, ctx), generator=torch.Generator().manual_seed(5))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(n_ctx * ctx, -1).numpy()
    group = {"tokens": tokens.reshape(-1).numpy(), "special_mask": np.zeros(n_ctx * ctx, bool),
             hook: acts}  # fmt: skip
    rows = np.array([c * ctx + p for c in range(n_ctx) for p in range(1, 15)])
    x = acts[rows]
    info = SimpleNamespace(
        x=x, x_hat=0.6 * x, rows=rows, position=rows % ctx,
        attrs={"context_len": ctx, "hook": hook, "sae": "s", "width": 4, "k": 1},
    )  # fmt: skip
    regression = SimpleNamespace(W_vec=np.eye(x.shape[1], dtype=np.float32) * 0.2)
    record = downstream_record(tiny_model, info, regression, group, n_ctx, 2, n_resamples=500)
    window = torch.zeros(n_ctx, ctx, dtype=torch.bool)
    window[:, 1:15] = True

    def per_context(scale):
        def scaled(value, hook):
            return torch.where(window[..., None], value * scale, value)

        with torch.no_grad():
            loss = tiny_model.run_with_hooks(
                tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, scaled)]
            )
        return (loss * window[:, :-1]).sum(dim=1).double().numpy()

    clean, sae, linear = per_context(1.0), per_context(0.6), per_context(0.8)
    n = window[:, :-1].sum(dim=1).double().numpy()
    assert record["ce_sae"] == pytest.approx(sae.sum() / n.sum(), rel=1e-5)

    def percent(c, s, v, axis=-1):
        c, s, v = c.sum(axis), s.sum(axis), v.sum(axis)
        return (s - v) / (s - c) * 100

    reference = stats.bootstrap(
        (clean, sae, linear), percent, paired=True, vectorized=True, method="percentile",
        n_resamples=500, rng=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    assert record["intervals"]["linear_percent"] == pytest.approx(list(reference), rel=1e-3)
    low, high = record["intervals"]["linear_percent"]
    assert low <= record["linear_percent"] <= high and low < high
    assert record["intervals"]["_method"]["n_contexts"] == n_ctx
