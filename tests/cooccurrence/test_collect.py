"""Tests of ``saelab.cooccurrence.collect``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.cache import CacheError
from saelab.cooccurrence import (
    cooccurrence_from_cache,
)
from saelab.cooccurrence.pca import subgraph_pca
from saelab.features import collect_feature_summary
from saelab.saes import SAEConfig, build_sae
from tests.cooccurrence.helpers import HOOK, identity_sae


def test_cooccurrence_from_cache_masks_special_tokens(cache):
    result = cooccurrence_from_cache(identity_sae(), cache, 1000, [0.0, 1.0], batch_size=5,
                                     progress=False)  # fmt: skip
    low, high = result[0.0], result[1.0]
    assert low.n_tokens == 28  # 32 rows minus 4 BOS
    assert low.firing_count.tolist() == [6, 4, 1]
    assert low.counts.toarray().tolist() == [[6, 4, 0], [4, 4, 0], [0, 0, 1]]
    assert high.firing_count.tolist() == [6, 4, 0]
    assert low.meta["encoding"] == "eval" and low.meta["l0_mean"] == pytest.approx(11 / 28)


def test_train_mode_batchtopk_option(cache):
    sae = identity_sae("batchtopk")
    with torch.no_grad():
        sae.threshold.fill_(100.0)  # eval mode would select nothing
    evald = cooccurrence_from_cache(sae, cache, 1000, [0.0], batch_size=7, progress=False)[0.0]
    assert evald.firing_count.sum() == 0
    trained = cooccurrence_from_cache(sae, cache, 1000, [0.0], batch_size=7,
                                      encoding="train_batchtopk", progress=False)[0.0]  # fmt: skip
    # 28 tokens = 4 batches of 7 tokens, k = 1: at most 7 selections per batch. Batch 1 (rows
    # 1..7) holds 8 positive entries, so one is dropped; batch 2 holds 3 (rows 9, 10, 12).
    assert trained.firing_count.sum() == 7 + 3
    assert float(sae.threshold) == 100.0


def test_every_cache_pass_rejects_an_sae_of_another_width(cache):
    wide = build_sae(SAEConfig(arch="relu", d_in=4, width=3, k=1, hook_name=HOOK))
    for run in (
        lambda: cooccurrence_from_cache(wide, cache, 8, [0.0], progress=False),
        lambda: subgraph_pca(wide, cache, [0]),
        lambda: collect_feature_summary(wide, cache, 8, progress=False),
    ):
        with pytest.raises(CacheError, match="is 3 wide but the SAE reads d_in=4"):
            run()
