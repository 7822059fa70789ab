"""Tests of ``saelab.cooccurrence.counts``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from saelab.cooccurrence import (
    dense_pair_counts,
    jaccard,
    load_counts,
    normalised_cooccurrence,
    pair_counts,
    save_counts,
    seed000_jaccard,
    threshold_tag,
)
from saelab.cooccurrence.counts import (
    CooccurrenceCounts,
    SparseActivity,
    counts_from_activity,
    mean_cooccurrence_by_latent,
)
from tests.cooccurrence.helpers import identity_sae

# Four tokens, three latents: t0 {0, 1}, t1 {0, 1, 2}, t2 {0}, t3 {2}.
ROWS = np.array([0, 0, 1, 1, 1, 2, 3])
LATENTS = np.array([0, 1, 0, 1, 2, 0, 2])
VALUES = np.array([2.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0], dtype=np.float32)


def hand_counts(threshold: float = 0.0) -> CooccurrenceCounts:
    activity = SparseActivity(ROWS, LATENTS, VALUES, 4, 3)
    return counts_from_activity(activity, threshold)


# ------------------------------------------------------------------ counts and matrices


def test_counts_by_hand():
    cc = hand_counts()
    assert cc.firing_count.tolist() == [3, 2, 2]
    assert cc.counts.toarray().tolist() == [[3, 2, 1], [2, 2, 1], [1, 1, 2]]
    # τ = 1.0 drops latent 2 on t1 (0.5 is not > 1.0): only t3 remains for it
    high = hand_counts(threshold=1.0)
    assert high.firing_count.tolist() == [3, 2, 1]
    assert high.counts.toarray().tolist() == [[3, 2, 0], [2, 2, 0], [0, 0, 1]]
    assert high.counts.nnz == 5  # zeros are not stored


def test_normalised_and_jaccards_by_hand():
    cc = hand_counts()
    n = normalised_cooccurrence(cc).toarray()
    expected = [[1, 2 / 3, 1 / 3], [2 / 3, 1, 1 / 2], [1 / 3, 1 / 2, 1]]
    np.testing.assert_allclose(n, expected, rtol=1e-6)
    # min(P(i|j), P(j|i)): P(1|0) = 2/3, P(0|1) = 1
    j = jaccard(cc).toarray()
    np.testing.assert_allclose(
        j, [[1, 2 / 3, 1 / 4], [2 / 3, 1, 1 / 3], [1 / 4, 1 / 3, 1]], rtol=1e-6
    )
    # the original's quantity: N'_ij / (n_i + n_j - N'_ij)
    s = seed000_jaccard(cc).toarray()
    np.testing.assert_allclose(
        s, [[1, 2 / 13, 1 / 14], [2 / 13, 1, 1 / 7], [1 / 14, 1 / 7, 1]], rtol=1e-5
    )
    # mean over the two other latents, diagonal excluded
    np.testing.assert_allclose(
        mean_cooccurrence_by_latent(normalised_cooccurrence(cc)),
        [(2 / 3 + 1 / 3) / 2, (2 / 3 + 1 / 2) / 2, (1 / 3 + 1 / 2) / 2], rtol=1e-6,
    )  # fmt: skip


def test_never_firing_latent_gets_unit_diagonal_like_the_original():
    activity = SparseActivity(np.array([0]), np.array([0]), np.array([1.0], np.float32), 2, 2)
    cc = counts_from_activity(activity, 0.0)
    assert normalised_cooccurrence(cc).toarray().tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_counts_equal_the_original_dense_method(seed):
    rng = np.random.default_rng(seed)
    n_rows, width, k = 700, 50, 6
    rows = np.repeat(np.arange(n_rows), k)
    latents = np.concatenate([rng.choice(width, k, replace=False) for _ in range(n_rows)])
    sparse = pair_counts(rows, latents, n_rows, width)
    dense = dense_pair_counts(rows, latents, n_rows, width, chunk_rows=64)
    np.testing.assert_array_equal(sparse.toarray(), dense)
    binary = np.zeros((n_rows, width))
    binary[rows, latents] = 1
    np.testing.assert_array_equal(dense, binary.T @ binary)
    activity = SparseActivity(rows, latents, np.ones(len(rows), np.float32), n_rows, width)
    a = counts_from_activity(activity, 0.0, "sparse")
    b = counts_from_activity(activity, 0.0, "dense")  # compacted to the latents that fire
    assert (a.counts != b.counts).nnz == 0 and b.counts.shape == (width, width)


def test_auto_method_picks_dense_for_dense_codes():
    from saelab.cooccurrence.counts import choose_method

    sparse_rows = np.repeat(np.arange(1000), 4)
    sparse_latents = np.tile([0, 300, 600, 900], 1000) + np.repeat(np.arange(1000) % 90, 4)
    assert choose_method(sparse_rows, sparse_latents, 1000) == "sparse"  # 16 vs 1000^2 / 128
    dense_rows = np.repeat(np.arange(100), 60)
    dense_latents = np.tile(np.arange(60), 100)  # k = U = 60: k^2 * 128 > U^2
    assert choose_method(dense_rows, dense_latents, 100) == "dense"


def test_codes_too_dense_for_either_method_stop_with_the_sae_and_its_l0(monkeypatch):
    """An SAE firing nearly everywhere (the gpt2-small smoke run's one-step Matryoshka: L0
    11,204 of 24,576, an hours-long sparse count and a 2.4 GB dense one) stops at once, named."""
    import saelab.cooccurrence.counts as counts_module

    n_rows, width, k = 50, 40, 30
    rows = np.repeat(np.arange(n_rows), k)
    latents = np.concatenate([np.random.default_rng(r).choice(width, k, replace=False)
                              for r in range(n_rows)])  # fmt: skip
    activity = SparseActivity(rows, latents, np.ones(len(rows), np.float32), n_rows, width)
    # k² = 900 per token, 45,000 in all: under the real limit, so both methods count it
    assert counts_from_activity(activity, 0.0, "sparse").counts[0, 0] > 0
    monkeypatch.setattr(counts_module, "MAX_SPARSE_PRODUCTS", 40_000)
    with pytest.raises(ValueError, match=r"SAE 'degenerate' at tau=0.0: .*mean L0 30 over 50 "
                       r"tokens.*4.50e\+04 pair products.*cooccurrence.thresholds"):  # fmt: skip
        counts_from_activity(activity, 0.0, "sparse", {"sae": "degenerate"})
    # the dense method, where the firing latents fit, is not limited
    dense = counts_from_activity(activity, 0.0, "dense", {"sae": "degenerate"})
    assert dense.counts.nnz > 0


def test_duplicate_entries_are_refused():
    with pytest.raises(ValueError, match="once"):
        pair_counts(np.array([0, 0]), np.array([1, 1]), 1, 2)


def test_counts_roundtrip(tmp_path):
    from saelab.cooccurrence.counts import save_sparse_matrix

    cc = hand_counts()
    matrix = normalised_cooccurrence(cc)
    loaded_matrix = sp.load_npz(save_sparse_matrix(matrix, tmp_path / "m.npz"))
    assert (loaded_matrix != matrix).nnz == 0  # readable by scipy.sparse.load_npz
    path = save_counts(cc, tmp_path / "c.npz")
    loaded = load_counts(path)
    assert (loaded.counts != cc.counts).nnz == 0
    assert loaded.firing_count.tolist() == [3, 2, 2] and loaded.n_tokens == 4
    assert threshold_tag(1.5) == "1_5" and threshold_tag(0) == "0_0"


@pytest.mark.parametrize("codes", ["sae", "clustered"])
def test_speed_benchmark_script_agrees_with_dense_counts(cache, tmp_path, codes):
    import sys

    from saelab.saes.io import save_sae
    from saelab.schema import REPO_ROOT

    out = tmp_path / "bench.json"
    args = [sys.executable, str(REPO_ROOT / "benchmarks" / "cooccurrence_speed.py"),
            "--codes", codes, "--dense-chunks", "0", "--json", str(out)]  # fmt: skip
    if codes == "sae":
        save_sae(identity_sae(), tmp_path / "sae")
        args += ["--sae", str(tmp_path / "sae"), "--cache", str(cache), "--tokens", "1000"]
    else:
        args += ["--tokens", "3000", "--width", "512", "--k", "8"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["identical"] and result["speedup"] > 0 and result["memory_ratio"] > 0
    if codes == "sae":  # the cache fixture: 28 tokens, latents 0, 1, 2 fire (see `cache`)
        assert (result["tokens"], result["width"], result["firing_latents"]) == (28, 3, 3)
        assert result["sparse_nnz"] == 5  # C = [[6, 4, 0], [4, 4, 0], [0, 0, 1]]
