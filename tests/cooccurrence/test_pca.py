"""Tests of ``saelab.cooccurrence.pca``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.cooccurrence.pca import pca_project, subgraph_pca, subgraph_pcas
from tests.cooccurrence.helpers import identity_sae


def test_subgraph_pca_on_cache(cache):
    result = subgraph_pca(identity_sae(), cache, [0, 1], max_examples=5, batch_size=4)
    # tokens firing 0 or 1, in order: rows 1, 2, 3, 4, 9 (BOS rows masked)
    assert result.rows.tolist() == [1, 2, 3, 4, 9]
    assert result.token_ids.tolist() == [1, 2, 3, 4, 9]
    assert result.active_latent.tolist() == [0, 0, 0, 0, 0]  # ties: the first latent
    # r_t = f0 * (1, 0, 0) + f1 * (0, 2, 0): four copies of (2, 4, 0) and one (3, 0, 0)
    assert result.explained_variance_ratio[0] == pytest.approx(1.0)
    assert np.ptp(result.coords[:4, 0]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no token"):
        subgraph_pca(identity_sae(), cache, [2], max_tokens=8)


def test_subgraph_pcas_of_several_subgraphs_equal_one_pass_each(cache):
    sae = identity_sae()
    together = subgraph_pcas(sae, cache, {7: [0, 1], 8: [1], 9: [2]}, max_examples=3, batch_size=4)
    for key, latents in ((7, [0, 1]), (8, [1])):
        alone = subgraph_pca(sae, cache, latents, max_examples=3, batch_size=4)
        for field in alone._fields:
            assert np.array_equal(getattr(together[key], field), getattr(alone, field)), field
    assert together[7].n_tokens_scanned == 4 and together[8].n_tokens_scanned == 4
    # latent 2 fires only at 0.5 on row 12: found once the scan reaches it
    assert together[9].rows.tolist() == [12]
    missing = subgraph_pcas(sae, cache, {1: [2]}, max_tokens=8)[1]
    assert isinstance(missing, ValueError) and "no token" in str(missing)


def test_pca_project_matches_known_directions():
    # a 4 x 2 grid in the first two of four dimensions: variances 5 and 1, uncorrelated
    grid = np.array([(x, y, 0.0, 0.0) for x in (-3, -1, 1, 3) for y in (-1, 1)]) + 7.0
    coords, ratio = pca_project(grid)
    np.testing.assert_allclose(ratio, [5 / 6, 1 / 6, 0], atol=1e-12)
    # sklearn's sign rule: the largest loading is positive, so PC1 = x and PC2 = y exactly
    np.testing.assert_allclose(coords[:, 0], grid[:, 0] - 7.0, atol=1e-12)
    np.testing.assert_allclose(coords[:, 1], grid[:, 1] - 7.0, atol=1e-12)
