"""Tests of ``saelab.saes.jumprelu``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    SAEConfig,
    build_sae,
)
from saelab.saes.batchtopk import threshold_codes
from tests.saes.helpers import entries


def test_jumprelu_per_latent_thresholds_are_strict():
    sae = build_sae(SAEConfig(arch="jumprelu", d_in=3, width=3, k=1)).eval()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.b_dec.zero_()
        sae.threshold.copy_(torch.tensor([0.5, 1.0, 0.0]))
    x = torch.tensor([[0.5, 1.5, 0.1], [0.6, 1.0, -0.2]])
    assert entries(sae(x).codes) == pytest.approx({(0, 1): 1.5, (0, 2): 0.1, (1, 0): 0.6})
    per_latent = threshold_codes(x, torch.tensor([0.0, 2.0, 0.0]))
    assert entries(per_latent) == pytest.approx({(0, 0): 0.5, (0, 2): 0.1, (1, 0): 0.6})
