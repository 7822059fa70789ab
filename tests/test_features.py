"""saelab.features: firing counts, running top-n with context windows, histograms, storage and
one-line descriptions, on a synthetic cache whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.cache import ActivationReader, build_cache
from saelab.codes import code_batches, collect_codes, encode_sparse, sae_reader
from saelab.features import (
    collect_feature_summary,
    describe_latent,
    latent_histograms,
    load_feature_summary,
    merge_top_n,
    save_feature_summary,
)
from saelab.saes import SAEConfig, build_sae

HOOK = "blocks.0.hook_resid_pre"
CTX = 8
N_CONTEXTS = 6
N_ROWS = CTX * N_CONTEXTS


class TableSource:
    """Activation source whose token ids are row ids into a fixed table."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {HOOK: self.table[tokens.long()]}


def activation_table() -> np.ndarray:
    """[48, 3]. Latent 0 fires on rows 3 (2.0), 10 (5.0), 17 (5.0), 30 (1.0) and on the BOS
    rows 0 and 8 (100.0, masked). Latent 1: 0.5 on every even row, negative on odd rows.
    Latent 2 never fires."""
    table = np.zeros((N_ROWS, 3), dtype=np.float32)
    for row, value in {3: 2.0, 10: 5.0, 17: 5.0, 30: 1.0, 0: 100.0, 8: 100.0}.items():
        table[row, 0] = value
    table[:, 1] = np.where(np.arange(N_ROWS) % 2 == 0, 0.5, -1.0)
    table[:, 2] = -3.0
    return table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "cache.zarr"
    tokens = np.arange(N_ROWS, dtype=np.int32).reshape(N_CONTEXTS, CTX)  # token id = row
    special = np.zeros(tokens.shape, dtype=bool)
    special[:, 0] = True  # BOS at every context start
    table = torch.from_numpy(activation_table())
    build_cache(
        TableSource(table), tokens, special, [HOOK], path, dtype="float32", batch_contexts=2,
        progress=False,
    )  # fmt: skip
    return path


def identity_sae():
    """ReLU SAE with W_enc = W_dec = I and zero biases: codes are relu(x)."""
    sae = build_sae(SAEConfig(arch="relu", d_in=3, width=3, k=1, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
    return sae


class FakeTokenizer:
    def decode(self, ids):
        return f"t{int(ids[0])}"


# ------------------------------------------------------------------ the cache -> codes stream


@pytest.mark.parametrize("split", ["all", "train", "heldout"])
def test_stream_rows_are_global_and_codes_match_the_table(cache, split):
    table = activation_table()
    sae = identity_sae()
    reader = sae_reader(sae, cache, batch_size=5, split=split)
    batches = list(code_batches(sae, reader, drop_special=True))
    rows = np.concatenate([b.rows for b in batches])
    # global rows: the split's whole row range, in order (not 0-based within the split)
    assert rows.tolist() == list(range(*reader.row_range))
    for batch in batches:
        assert np.array_equal(batch.x.numpy(), table[batch.rows])  # x is the row's activation
        dense = np.zeros((len(batch.rows), 3), dtype=np.float32)
        dense[batch.codes.rows.numpy(), batch.codes.latents.numpy()] = batch.codes.values.numpy()
        expected = np.maximum(table[batch.rows], 0)
        expected[batch.rows % CTX == 0] = 0  # special (BOS) rows dropped from the codes
        assert np.array_equal(dense, expected)
    collected = collect_codes(batches)
    assert collected.n_rows == len(rows)
    assert set(collected.rows.tolist()) <= set(rows.tolist())
    fired = collected.rows[collected.latents == 0].tolist()
    assert fired == [r for r in (3, 10, 17, 30) if reader.row_range[0] <= r < reader.row_range[1]]


def test_stream_heldout_never_overlaps_training_rows(cache):
    sae = identity_sae()
    seen = {}
    for split in ("train", "heldout"):
        reader = sae_reader(sae, cache, batch_size=7, split=split)
        seen[split] = np.concatenate([b.rows for b in code_batches(sae, reader)])
    assert set(seen["train"]).isdisjoint(seen["heldout"])
    assert sorted({*seen["train"], *seen["heldout"]}) == list(range(N_ROWS))
    reader = sae_reader(sae, cache, batch_size=7, split="heldout")
    contexts = set(reader.context_of(seen["heldout"]).tolist())
    assert contexts == set(range(*reader.context_range)) and min(contexts) > max(
        reader.context_of(seen["train"])
    )


def test_stream_stops_at_n_rows_and_refuses_shuffled_readers(cache):
    sae = identity_sae()
    reader = sae_reader(sae, cache, batch_size=5)
    assert sum(len(b.rows) for b in code_batches(sae, reader, n_rows=12)) == 12
    shuffled = ActivationReader(cache, HOOK, 5, split="all", shuffle=True)
    with pytest.raises(ValueError, match="in order"):
        next(code_batches(sae, shuffled))
    with pytest.raises(ValueError, match="encoding 'bogus'"):
        next(code_batches(sae, reader, encoding="bogus"))


def test_reader_owns_contexts_and_windows(cache):
    reader = ActivationReader(cache, HOOK, 4, split="heldout", shuffle=False)
    first, last = reader.context_range
    assert reader.row_range == (first * CTX, last * CTX) and reader.context_len == CTX
    contexts = reader.contexts()
    assert contexts.tokens.shape == (last - first, CTX)
    assert np.array_equal(contexts.tokens.reshape(-1), contexts.rows)  # token id = row here
    assert contexts.special[:, 0].all() and not contexts.special[:, 1:].any()
    assert len(reader.contexts(1).rows) == CTX
    window = reader.window_rows([0, 3])
    assert window.tolist() == [r for r in contexts.rows if 0 < r % CTX < 3]  # BOS left out
    assert np.array_equal(reader.position_of(window), window % CTX)
    assert np.array_equal(reader.tokens_of(window[::-1]), window[::-1])
    assert reader.rows_for_tokens(1) == CTX and reader.rows_for_tokens(10**6) == reader.n_rows


# ------------------------------------------------------------------ running top-n


def test_merge_top_n_keeps_largest_and_earliest_on_ties():
    values = np.zeros((2, 2), dtype=np.float32)
    rows = np.full((2, 2), -1, dtype=np.int64)
    merge_top_n(values, rows, np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]), np.array([5, 6, 7]))
    assert rows.tolist() == [[6, 5], [7, -1]]
    assert values.tolist() == [[3.0, 1.0], [2.0, 0.0]]
    # a tie with an existing entry keeps the existing (earlier) row; a larger one displaces
    merge_top_n(values, rows, np.array([0, 1, 1]), np.array([3.0, 9.0, 2.0]), np.array([8, 9, 10]))
    assert rows.tolist() == [[6, 8], [9, 7]]
    assert values.tolist() == [[3.0, 3.0], [9.0, 2.0]]


def test_latent_histograms_match_numpy():
    latents = np.array([0, 0, 0, 0, 1])
    values = np.array([1.0, 2.0, 3.0, 4.0, 0.5], dtype=np.float32)
    edges, counts = latent_histograms(latents, values, width=3, n_bins=4)
    expected, expected_edges = np.histogram([1, 2, 3, 4], bins=4, range=(0, 4))
    assert counts[0].tolist() == expected.tolist() == [0, 1, 1, 2]
    np.testing.assert_allclose(edges[0], expected_edges)
    assert counts[1].tolist() == [0, 0, 0, 1]  # the maximum falls in the last bin
    assert counts[2].sum() == 0 and not edges[2].any()


# ------------------------------------------------------------------ collection


@pytest.mark.parametrize("batch_size", [5, 4096])
def test_collect_hand_checked(cache, batch_size):
    summary = collect_feature_summary(
        identity_sae(), cache, n_tokens=N_ROWS, top_n=2, before=3, after=2,
        batch_size=batch_size, n_bins=4, progress=False,
    )  # fmt: skip
    assert summary.n_tokens == N_ROWS - N_CONTEXTS  # BOS rows masked
    # latent 0: rows 3, 10, 17, 30 (BOS rows 0 and 8 masked); latent 1: even non-BOS rows
    assert summary.firing_count.tolist() == [4, N_ROWS // 2 - N_CONTEXTS, 0]
    assert summary.top_rows[0].tolist() == [10, 17]  # tie at 5.0: the earlier row first
    assert summary.top_values[0].tolist() == [5.0, 5.0]
    assert summary.top_rows[2].tolist() == [-1, -1]
    assert summary.top_rows[1].tolist() == [2, 4]  # all 0.5: the earliest rows
    # row 10 = context 1, position 2: the window rows 7..12 lose row 7 (context 0)
    assert summary.context_tokens[0, 0].tolist() == [-1, 8, 9, 10, 11, 12]
    # row 8 is BOS: its 100.0 is masked to 0; row 10 holds the top activation
    assert summary.context_values[0, 0].tolist() == [0.0, 0.0, 0.0, 5.0, 0.0, 0.0]
    # row 17 = context 2, position 1: rows 14, 15 are context 1
    assert summary.context_tokens[0, 1].tolist() == [-1, -1, 16, 17, 18, 19]
    assert summary.context_tokens[2].max() == -1
    assert summary.hist_counts[0].tolist() == [1, 1, 0, 2]  # 1, 2, 5, 5 on edges 0..5
    np.testing.assert_allclose(summary.hist_edges[0], [0, 1.25, 2.5, 3.75, 5.0])
    assert summary.meta["hook"] == HOOK and summary.meta["top_n"] == 2


def test_collect_rounds_to_whole_contexts(cache):
    summary = collect_feature_summary(
        identity_sae(), cache, n_tokens=20, top_n=3, before=1, after=1, batch_size=7,
        progress=False,
    )  # fmt: skip
    assert summary.meta["rows_read"] == 24  # 20 tokens -> 3 whole contexts
    assert summary.n_tokens == 21
    assert summary.firing_count[0] == 3  # rows 3, 10, 17; row 30 is beyond
    assert summary.top_rows[0].tolist() == [10, 17, 3]
    # row 17 = context 2 position 1: the window reaches row 16 (BOS, masked) and row 18
    assert summary.context_tokens[0, 1].tolist() == [16, 17, 18]


def test_collect_restores_training_mode_and_checks_width(cache):
    sae = identity_sae().train()
    collect_feature_summary(sae, cache, n_tokens=8, progress=False)
    assert sae.training
    wide = build_sae(SAEConfig(arch="relu", d_in=5, width=3, k=1, hook_name=HOOK))
    with pytest.raises(Exception, match="d_in=5"):
        collect_feature_summary(wide, cache, n_tokens=8, progress=False)
    with pytest.raises(ValueError, match="n_tokens"):
        collect_feature_summary(sae, cache, n_tokens=0, progress=False)


def test_save_load_roundtrip_and_describe(cache, tmp_path):
    summary = collect_feature_summary(
        identity_sae(), cache, n_tokens=N_ROWS, top_n=3, before=2, after=1, progress=False
    )
    path = save_feature_summary(summary, tmp_path / "sub" / "s.npz")
    assert [p.name for p in path.parent.iterdir()] == ["s.npz"]  # no temp file left
    loaded = load_feature_summary(path)
    for name in ("firing_count", "top_rows", "top_values", "context_tokens", "context_values"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(summary, name))
    assert loaded.n_tokens == summary.n_tokens and loaded.meta == summary.meta
    text = describe_latent(loaded, 0, FakeTokenizer(), n=2)
    # 4 of 42 tokens; top rows 10, 17, 3 are distinct tokens: the two largest first
    assert text.startswith("fires 9.52% · top tokens: 't10', 't17' · e.g. ")
    assert "t8t9«t10»t11" in text
    assert "never" in describe_latent(loaded, 2, FakeTokenizer())
    with pytest.raises(IndexError):
        describe_latent(loaded, 3, FakeTokenizer())
    with pytest.raises(FileNotFoundError, match="feature_summary"):
        load_feature_summary(tmp_path / "missing.npz")


def test_train_batchtopk_encoding_leaves_threshold_alone():
    sae = build_sae(SAEConfig(arch="batchtopk", d_in=4, width=6, k=2))
    with torch.no_grad():
        sae.threshold.fill_(0.25)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    codes = encode_sparse(sae, x, "train_batchtopk")
    assert codes.values.numel() == 2 * 10  # exactly k·B selections
    assert float(sae.threshold) == 0.25 and sae.training
    eval_codes = encode_sparse(sae, x, "eval")
    assert bool((eval_codes.values > 0.25).all())
    with pytest.raises(ValueError, match="encoding"):
        encode_sparse(sae, x, "bogus")
