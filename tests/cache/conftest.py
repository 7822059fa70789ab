"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_cache.py)."""

from __future__ import annotations

import pytest

from saelab.cache import (
    TLActivationSource,
    build_cache,
)
from tests.cache.helpers import BATCH, HOOKS, tiny_tl_model, token_contexts


@pytest.fixture(scope="module")
def model():
    return tiny_tl_model()


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    tokens, special = token_contexts()
    path = tmp_path_factory.mktemp("cache") / "main.zarr"
    summary = build_cache(
        TLActivationSource(model, HOOKS), tokens, special, HOOKS, path,
        dtype="float32", batch_contexts=BATCH, manifest={"model": "toy"}, progress=False,
    )  # fmt: skip
    return path, summary, tokens, special
