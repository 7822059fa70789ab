"""Helpers moved verbatim from tests/test_darkmatter.py, used by
tests/darkmatter/test_norms.py
tests/darkmatter/test_regression.py
tests/plots/test_darkmatter.py."""

from __future__ import annotations

import numpy as np

from saelab.darkmatter.info import (
    SAEInfo,
)


def make_info(x: np.ndarray, error: np.ndarray, error_sq_norm=None, token_ids=None) -> SAEInfo:
    """A hand-built SAEInfo: x̂ = x − error, one active latent per token."""
    n, _ = x.shape
    x = x.astype(np.float32)
    error = error.astype(np.float32)
    sq = np.square(error).sum(1) if error_sq_norm is None else error_sq_norm
    return SAEInfo(
        x=x, x_hat=x - error, error=error, error_sq_norm=sq.astype(np.float32),
        x_sq_norm=np.square(x).sum(1), l0=np.ones(n, np.int32),
        latent_idx=np.zeros((n, 1), np.int32), latent_val=np.ones((n, 1), np.float32),
        rows=np.arange(n), token_ids=np.arange(n) % 7 if token_ids is None else token_ids,
        position=np.arange(n, dtype=np.int32) % 16 + 1, attrs={"sae": "toy", "width": 4, "k": 1},
    )  # fmt: skip
