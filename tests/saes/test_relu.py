"""Tests of ``saelab.saes.relu``, moved from tests/test_saes.py.

Notes shared with the other tests moved from tests/test_saes.py: ``tests/saes/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.saes import (
    SAEConfig,
    build_sae,
)
from tests.saes.helpers import entries

# ---------------------------------------------------------------------- ReLU and JumpReLU


def test_relu_sae_codes_and_l1_term():
    cfg = SAEConfig(arch="relu", d_in=3, width=3, k=1, l1_coeff=0.1, loss="official")
    sae = build_sae(cfg).train()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.0]))
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.5, 3.0]])
    out = sae(x)
    # codes = relu(x + b_enc): (1, 1, 0) and (0.5, 0, 3); every positive one is active
    assert entries(out.codes) == pytest.approx({(0, 0): 1.0, (0, 1): 1.0, (1, 0): 0.5, (1, 2): 3.0})
    assert out.sparsity_loss.item() == pytest.approx(0.1 * (1 + 1 + 0.5 + 3) / 2)
    recon = ((1 + 1) + (0.5**2)) / 2  # errors (0, -1, 1) and (0, -0.5, 0) summed per token
    assert out.recon_loss.item() == pytest.approx(recon)
    assert out.loss.item() == pytest.approx(recon + 0.1 * 5.5 / 2)
    assert out.aux_loss.item() == 0
