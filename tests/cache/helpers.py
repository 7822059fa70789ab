"""Helpers moved verbatim from tests/test_cache.py, used by
tests/cache/conftest.py
tests/cache/test_build.py
tests/cache/test_checked.py
tests/cache/test_reader.py."""

from __future__ import annotations

import numpy as np
from transformer_lens import HookedTransformer, HookedTransformerConfig

HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.attn.hook_z",
]
N_CONTEXTS, CTX, BATCH = 24, 16, 4


def tiny_tl_model(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=CTX, d_vocab=100,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def token_contexts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 100, size=(N_CONTEXTS, CTX)).astype(np.int32)
    tokens[:, 0] = 0  # BOS
    tokens[5, 7] = 0  # a document boundary mid-context
    return tokens, tokens == 0
