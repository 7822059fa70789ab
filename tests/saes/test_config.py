"""Tests of ``saelab.saes.config``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

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
