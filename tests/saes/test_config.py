"""Tests of saelab.saes: every architecture's invariants on hand-built or brute-force-checked
examples, the sparse decoder and encoder gradients, decoder upkeep, the aux loss and dead
counter, bias conventions, transcoders, and the SAE-Lens round trip in both directions.

Hand-built SAEs use identity-like weights so that every code and loss can be written down; the
random cases compare against a dense brute-force implementation. sae_lens is imported only by
the tests that need it (it takes a few seconds)."""

from __future__ import annotations

import json

import pytest

from saelab.saes import (
    SAEConfig,
)
from tests.saes.helpers import make


def test_config_validation():
    with pytest.raises(ValueError, match="k = 9"):
        SAEConfig(arch="topk", d_in=4, width=8, k=9)
    with pytest.raises(ValueError, match="loss 'mse'"):
        SAEConfig(arch="topk", d_in=4, width=8, loss="mse")
    with pytest.raises(ValueError, match="unknown SAE config key"):
        SAEConfig.from_dict({"arch": "topk", "d_in": 4, "width": 8, "dict_size": 8})
    cfg = make("matryoshka", d_out=5, target_hook_name="t", extra={"run": "x"})
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
