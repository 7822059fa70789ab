"""Helpers moved verbatim from tests/test_evaluate.py, used by
tests/test_absorption.py
tests/test_ce.py
tests/test_evaluate.py."""

from __future__ import annotations

import torch

from saelab.saes import SAEConfig, build_sae

# ------------------------------------------------------------------------------------ helpers


def set_weights(sae, W_enc, W_dec, b_dec=None):
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W_enc, dtype=torch.float32))
        sae.W_dec.copy_(torch.as_tensor(W_dec, dtype=torch.float32))
        if b_dec is not None:
            sae.b_dec.copy_(torch.as_tensor(b_dec, dtype=torch.float32))
    return sae.eval()


def identity_relu_sae(d: int, hook: str):
    """A ReLU SAE with a perfect dictionary: latents +x and −x, so relu(x) − relu(−x) = x."""
    sae = build_sae(SAEConfig(arch="relu", d_in=d, width=2 * d, k=1, hook_name=hook))
    eye = torch.eye(d)
    return set_weights(sae, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0))
