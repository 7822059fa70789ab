"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_cooccurrence.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.cache import build_cache
from tests.cooccurrence.helpers import CTX, HOOK, TableSource


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Rows 0..31 (4 contexts of 8, BOS at each start). Latents 0 and 1 both fire on rows
    1..4; latent 0 alone on 9..10; BOS rows carry 9.0 on every latent (masked). Latent 2 fires
    on row 12 at 0.5 only."""
    table = np.full((32, 3), -1.0, dtype=np.float32)
    table[1:5, :2] = 2.0
    table[9:11, 0] = 3.0
    table[12, 2] = 0.5
    table[::CTX] = 9.0
    tokens = np.arange(32, dtype=np.int32).reshape(4, CTX)
    special = np.zeros(tokens.shape, dtype=bool)
    special[:, 0] = True
    path = tmp_path_factory.mktemp("cooc") / "cache.zarr"
    build_cache(TableSource(torch.from_numpy(table)), tokens, special, [HOOK], path,
                dtype="float32", batch_contexts=1, progress=False)  # fmt: skip
    return path
