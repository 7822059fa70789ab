"""Tests of ``saelab.darkmatter.components``, moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.darkmatter.components import component_hooks, predictability_table
from saelab.darkmatter.regression import ErrorParts

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ components


def test_component_hooks_from_templates():
    cached = ["blocks.3.hook_resid_pre", "blocks.4.hook_resid_pre", "blocks.4.hook_mlp_out"]
    templates = {
        "prev_res": "blocks.{prev_layer}.hook_resid_pre",
        "same": "blocks.{layer}.hook_resid_pre",
        "mlp": "blocks.{layer}.hook_mlp_out",
        "att": "blocks.{layer}.hook_attn_out",
    }
    usable, skipped = component_hooks(templates, "blocks.4.hook_resid_pre", cached)
    assert usable == {"prev_res": "blocks.3.hook_resid_pre", "mlp": "blocks.4.hook_mlp_out"}
    assert "analysed hook" in skipped["same"] and "not in the cache" in skipped["att"]
    with pytest.raises(ValueError, match="reserved"):
        component_hooks({"res": "x"}, "blocks.4.hook_resid_pre", cached)
    with pytest.raises(ValueError, match="may hold only"):
        component_hooks({"bad": "blocks.{block}.hook_z"}, "blocks.4.hook_resid_pre", cached)


def test_predictability_from_a_linear_source_and_from_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    x_hat = 0.5 * x + 0.05 * rng.normal(size=x.shape)
    W = 0.5 * np.eye(5)
    targets = ErrorParts.of(x, x_hat, W)._asdict()
    assert np.allclose(targets["linear"] + targets["nonlinear"], targets["error"])
    source = x @ rng.normal(size=(5, 5))  # an invertible map of x: predicts x W exactly
    table = predictability_table(
        targets, {"source": source, "noise": rng.normal(size=(2000, 7))}, seed=0
    )
    assert table["linear"]["source"] == pytest.approx(1.0, abs=1e-9)
    assert table["error"]["source"] > 0.95
    assert table["nonlinear"]["source"] < 0.05  # the nonlinear part is the noise in x̂
    assert table["linear"]["noise"] < 0.02
    with pytest.raises(ValueError, match="share their rows"):
        predictability_table(targets, {"short": source[:10]})
