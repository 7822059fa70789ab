"""Tests of ``saelab.cache.reader``, moved from tests/test_cache.py.

Notes shared with the other tests moved from tests/test_cache.py: ``tests/cache/__init__.py``."""

from __future__ import annotations

import numpy as np
import torch
import zarr

from saelab.cache import (
    ActivationReader,
    context_rows,
    rows_of_contexts,
    split_rows,
)
from tests.cache.helpers import BATCH, CTX, HOOKS, N_CONTEXTS

# ------------------------------------------------------------------ reader


def test_split_rows_and_context_rows_by_hand():
    # contexts of 8 tokens: row 0 is context 0 position 0, row 13 context 1 position 5, ...
    contexts, positions = split_rows(np.array([0, 7, 8, 13, 23, 24]), 8)
    assert contexts.tolist() == [0, 0, 1, 1, 2, 3]
    assert positions.tolist() == [0, 7, 0, 5, 7, 0]
    assert [int(v) for v in split_rows(13, 8)] == [1, 5]  # a single row
    assert context_rows(1, 3, 8) == slice(8, 24)  # contexts 1 and 2
    rows = np.arange(8 * 5)
    contexts, positions = split_rows(rows, 8)
    assert np.array_equal(contexts * 8 + positions, rows)
    for c in range(5):
        assert np.all(contexts[context_rows(c, c + 1, 8)] == c)
    # contexts 3 and 1 of 4 tokens, in the order given
    assert rows_of_contexts(np.array([3, 1]), 4).tolist() == [12, 13, 14, 15, 4, 5, 6, 7]


def test_reader_contexts_and_positions_use_split_rows(built):
    path, *_ = built
    reader = ActivationReader(path, HOOKS[0], 10, split="heldout")
    first, last = reader.context_range
    assert reader.row_range == (first * CTX, last * CTX)
    rows = np.array([0, CTX - 1, CTX, 5 * CTX + 3])
    assert reader.context_of(rows).tolist() == [0, 0, 1, 5]
    assert reader.position_of(rows).tolist() == [0, CTX - 1, 0, 3]


def test_reader_splits_cover_every_non_special_row_once(built):
    path, _, _, special = built
    keep = set(np.flatnonzero(~special.reshape(-1)))
    seen = {}
    for split in ("train", "heldout"):
        reader = ActivationReader(path, HOOKS[0], 10, split=split, drop_last=False, buffer_chunks=2)
        rows = np.concatenate([r for _, r in reader.batches(with_rows=True)])
        assert len(rows) == len(set(rows)), "a row was yielded twice in one epoch"
        seen[split] = set(rows)
    assert seen["train"].isdisjoint(seen["heldout"])
    assert seen["train"] | seen["heldout"] == keep
    heldout_contexts = {r // CTX for r in seen["heldout"]}
    assert heldout_contexts == {N_CONTEXTS - 1}  # 5% of 24 contexts rounds to one


def test_reader_batches_mix_sequences_and_match_the_arrays(built):
    path, *_ = built
    group = zarr.open_group(path, mode="r")
    reader = ActivationReader(path, [HOOKS[1], HOOKS[2]], 32, seed=3, buffer_chunks=4)
    (mid, mlp), rows = next(reader.batches(with_rows=True))
    assert mid.dtype == torch.float32 and mid.shape == (32, 32)
    np.testing.assert_array_equal(mid.numpy(), group[HOOKS[1]][:][rows])
    np.testing.assert_array_equal(mlp.numpy(), group[HOOKS[2]][:][rows])
    contexts = rows // CTX
    assert len(set(contexts)) >= 8, "a shuffled batch should draw from many sequences"
    # Same seed, same order; the next epoch reshuffles.
    again = ActivationReader(path, [HOOKS[1], HOOKS[2]], 32, seed=3, buffer_chunks=4)
    _, rows_again = next(again.batches(with_rows=True))
    np.testing.assert_array_equal(rows, rows_again)
    _, rows_epoch2 = next(again.batches(with_rows=True))
    assert not np.array_equal(rows, rows_epoch2)


def test_reader_memory_is_bounded_by_the_buffer(built, monkeypatch):
    path, *_ = built
    reader = ActivationReader(path, HOOKS[0], 8, buffer_chunks=2)
    reads = []
    original = reader._read_chunk

    def counting(start, stop):
        reads.append((start, stop))
        return original(start, stop)

    monkeypatch.setattr(reader, "_read_chunk", counting)
    batches = reader.batches()
    next(batches)
    assert len(reads) == 2, "the first batch should need only buffer_chunks chunks"
    assert all(stop - start <= BATCH * CTX for start, stop in reads)


def test_read_all_is_in_row_order(built):
    path, *_ = built
    group = zarr.open_group(path, mode="r")
    everything = ActivationReader(path, HOOKS[0], 8, split="all", exclude_special=False).read_all()
    np.testing.assert_array_equal(everything.numpy(), group[HOOKS[0]][:])
