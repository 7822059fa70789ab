"""Helpers moved verbatim from tests/test_cooccurrence.py, used by
tests/cooccurrence/conftest.py
tests/cooccurrence/test_collect.py
tests/cooccurrence/test_counts.py
tests/cooccurrence/test_dashboards.py
tests/cooccurrence/test_pca.py."""

from __future__ import annotations

import torch

from saelab.saes import SAEConfig, build_sae

# ------------------------------------------------------------------ from a cache

HOOK = "blocks.0.hook_resid_pre"
CTX = 8


class TableSource:
    def __init__(self, table):
        self.table = table

    def __call__(self, tokens):
        return {HOOK: self.table[tokens.long()]}


def identity_sae(arch="relu"):
    sae = build_sae(SAEConfig(arch=arch, d_in=3, width=3, k=1, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3) * torch.tensor([[1.0], [2.0], [3.0]]))
    return sae
