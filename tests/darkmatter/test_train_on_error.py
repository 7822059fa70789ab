"""Tests of ``saelab.darkmatter.train_on_error``, moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import torch

from saelab.darkmatter.train_on_error import (
    ErrorSAEConfig,
    dense_activations,
    train_error_sae,
)

torch.set_num_threads(1)


def test_train_error_sae_learns_a_sparse_target():
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=gen)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(4096, 32)
    for row in range(4096):
        codes[row, torch.randperm(32, generator=gen)[:2]] = torch.rand(2, generator=gen) + 1
    data = codes @ atoms
    cfg = ErrorSAEConfig(width=64, k=4, n_tokens=4096 * 12, batch_size=512, lr=3e-3, seed=0)
    sae, fvus = train_error_sae(data, cfg, progress=False)
    assert fvus[-1] < 0.35 < fvus[0]
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    acts = dense_activations(sae, data[:100])
    assert acts.shape == (100, 64) and ((acts > 0).sum(1) <= 4).all()
