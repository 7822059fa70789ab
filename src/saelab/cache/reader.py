"""Reading a cache: the split into contexts and windows, and shuffled or in-order batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from saelab.cache.checked import MANIFEST_KEY, CacheError, open_cache


def heldout_split(n_contexts: int, heldout_fraction: float) -> int:
    """Training contexts of ``n_contexts``: the last ``max(1, round(n * heldout_fraction))``
    are held out (the cache's reader and the streaming source split alike)."""
    n_heldout = max(1, round(n_contexts * heldout_fraction))
    if n_heldout >= n_contexts:
        raise CacheError(f"only {n_contexts} contexts: too few to hold out any")
    return n_contexts - n_heldout


def split_rows(rows, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The context and the position in it of each global cache row (int or array):
    ``row = context * context_len + position``. The one place that splits rows; readers and
    callers holding rows but no open reader (an SAE info, top-activation rows) use it."""
    rows = np.asarray(rows)
    return rows // context_len, rows % context_len


def context_rows(first: int, last: int, context_len: int) -> slice:
    """The global cache rows of contexts [first, last): the inverse of :func:`split_rows`."""
    return slice(first * context_len, last * context_len)


def rows_of_contexts(contexts: np.ndarray, context_len: int) -> np.ndarray:
    """The global cache rows of every context in ``contexts`` (any order), context by context."""
    return (np.asarray(contexts)[:, None] * context_len + np.arange(context_len)).reshape(-1)


class Contexts(NamedTuple):
    """Whole contexts of a cache split."""

    tokens: np.ndarray
    """[n, context_len] int64 token ids."""
    special: np.ndarray
    """[n, context_len] bool: BOS/EOS/PAD."""
    rows: np.ndarray
    """[n * context_len] int64 global rows, context by context."""


def window_rows(
    special_mask: np.ndarray,
    row_range: tuple[int, int],
    context_len: int,
    window,
    n_tokens: int | None = None,
    split: str = "",
) -> np.ndarray:
    """Rows in ``row_range`` at positions [window[0], window[1]) of their context, not special
    (``special_mask`` covers the cache from row 0), in order, at most ``n_tokens``."""
    start, stop = window[0], min(window[1], context_len)
    if start >= stop:
        raise ValueError(f"window {window} holds no position of contexts of {context_len} tokens")
    first, last = row_range
    rows = np.arange(first, last, dtype=np.int64)
    pos = split_rows(rows, context_len)[1]
    keep = (pos >= start) & (pos < stop) & ~special_mask[first:last]
    rows = rows[keep][:n_tokens]
    if len(rows) == 0:
        raise ValueError(f"the window {window} of split {split!r} holds no tokens")
    return rows


class ActivationReader:
    """Shuffled batches of cached activations with bounded memory, without the model or corpus.

    Rows are split by context: the last ``heldout_fraction`` of contexts form the ``heldout``
    split, the rest ``train``. Shuffling mixes ``buffer_chunks`` randomly chosen chunks (each
    holding many sequences) and permutes their rows, so a batch draws tokens from many
    sequences while at most ``buffer_chunks`` chunks are in memory. Several hooks (e.g. a
    transcoder's source and target) are read with the same row permutation.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        hooks: str | list[str],
        batch_size: int,
        *,
        split: str = "train",
        heldout_fraction: float = 0.05,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int = 8,
        exclude_special: bool = True,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        self.group = open_cache(path)
        self.manifest = dict(self.group.attrs[MANIFEST_KEY])
        self.single = isinstance(hooks, str)
        self.hooks: list[str] = [hooks] if isinstance(hooks, str) else list(hooks)
        for hook in self.hooks:
            if hook not in self.manifest["hooks"]:
                raise CacheError(
                    f"hook {hook!r} is not in the cache {path}; it holds {self.manifest['hooks']}"
                )
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split {split!r} is not allowed; use 'train', 'heldout' or 'all'")
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction {heldout_fraction} must be in (0, 1)")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_chunks = buffer_chunks
        self.exclude_special = exclude_special
        self.drop_last = drop_last
        self.dtype = dtype
        self.device = device
        self.epoch = 0

        ctx = self.manifest["context_len"]
        n_ctx = self.manifest["n_contexts"]
        n_train = heldout_split(n_ctx, heldout_fraction)
        bounds = {"train": (0, n_train), "heldout": (n_train, n_ctx)}
        bounds["all"] = (0, n_ctx)
        first, last = bounds[split]
        self.split = split
        self.context_len = int(ctx)
        self.context_range = (first, last)
        """The split's contexts [first, last)."""
        rows = context_rows(first, last, ctx)
        self.row_range = (rows.start, rows.stop)
        """The split's rows [first, last): row = context * context_len + position."""
        chunk = self.manifest["chunk_rows"]
        starts = range(self.row_range[0] - self.row_range[0] % chunk, self.row_range[1], chunk)
        self._blocks = [
            (max(s, self.row_range[0]), min(s + chunk, self.row_range[1])) for s in starts
        ]
        self._special = self.group["special_mask"]

    # ----------------------------------------------------------------- contexts and windows
    # row = context * context_len + position lives in split_rows and context_rows.

    def context_of(self, rows) -> np.ndarray:
        """The context of each global cache row."""
        return split_rows(rows, self.context_len)[0]

    def position_of(self, rows) -> np.ndarray:
        """The position of each global cache row in its context."""
        return split_rows(rows, self.context_len)[1]

    def rows_for_tokens(self, n_tokens: int) -> int:
        """``n_tokens`` rounded up to whole contexts, capped at the split's rows."""
        if n_tokens <= 0:
            raise ValueError(f"n_tokens must be positive, got {n_tokens}")
        ctx = self.context_len
        return min(-(-n_tokens // ctx) * ctx, self.n_rows)

    def contexts(self, n_contexts: int | None = None) -> Contexts:
        """The first ``n_contexts`` contexts of the split (all by default) as [n, ctx] arrays:
        token ids (int64), the special mask and their global rows."""
        first, last = self.context_range
        if n_contexts is not None:
            last = min(last, first + n_contexts)
        ctx = self.context_len
        rows = context_rows(first, last, ctx)
        tokens = np.asarray(self.group["tokens"][rows], dtype=np.int64).reshape(-1, ctx)
        special = np.asarray(self.group["special_mask"][rows], dtype=bool).reshape(-1, ctx)
        return Contexts(tokens, special, np.arange(rows.start, rows.stop, dtype=np.int64))

    def window_rows(self, window, n_tokens: int | None = None) -> np.ndarray:
        """Global rows at positions [start, stop) of every context of the split, special
        tokens left out, in cache order, at most ``n_tokens``."""
        special = np.asarray(self.group["special_mask"][:], dtype=bool)
        return window_rows(special, self.row_range, self.context_len, window, n_tokens, self.split)

    def tokens_of(self, rows: np.ndarray) -> np.ndarray:
        """Token ids (int64) of global ``rows`` (one contiguous read from the first to the last)."""
        lo = int(rows.min())
        span = np.asarray(self.group["tokens"][lo : int(rows.max()) + 1], dtype=np.int64)
        return span[rows - lo]

    @property
    def widths(self) -> dict[str, int]:
        return {h: int(self.manifest["widths"][h]) for h in self.hooks}

    @property
    def n_rows(self) -> int:
        """Rows in this split (before excluding special tokens)."""
        return self.row_range[1] - self.row_range[0]

    def _read_chunk(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Every hook's rows ``start..stop`` as stored, and which of them this reader yields."""
        values = [self.group[h][start:stop] for h in self.hooks]
        if self.exclude_special:
            return values, ~np.asarray(self._special[start:stop], dtype=bool)
        return values, np.ones(stop - start, dtype=bool)

    def _read_block(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The rows ``start..stop`` this reader yields: every hook's values and the rows."""
        values, keep = self._read_chunk(start, stop)
        if keep.all():
            return values, np.arange(start, stop)
        return [v[keep] for v in values], np.arange(start, stop)[keep]

    def _to_torch(self, values: list[np.ndarray]):
        tensors = [torch.from_numpy(v).to(self.device, self.dtype) for v in values]
        return tensors[0] if self.single else tuple(tensors)

    def batches(self, with_rows: bool = False) -> Iterator:
        """One pass over the split. Yields a tensor (one hook) or a tuple (several hooks);
        with ``with_rows`` also the global row indices (:func:`split_rows` gives their contexts)."""
        # Each call is a new epoch with its own permutation, even if the last was not finished.
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self._blocks)) if self.shuffle else range(len(self._blocks))
        order = list(order)
        carry: list[list[np.ndarray]] = [[] for _ in self.hooks]  # rows left from the last group
        carry_rows = np.empty(0, dtype=np.int64)
        for group_start in range(0, len(order), self.buffer_chunks):
            blocks = [
                self._blocks[i] for i in order[group_start : group_start + self.buffer_chunks]
            ]
            # One copy into the buffer (carry first), then one gather per batch: no filtered,
            # re-concatenated or permuted copy of the whole buffer (3 passes over ~0.8 GB for
            # the 18-hook cache).
            chunks = [self._read_chunk(start, stop) for start, stop in blocks]
            values = [
                np.concatenate([*c, *(chunk[0][j] for chunk in chunks)])
                for j, c in enumerate(carry)
            ]
            rows = np.concatenate([carry_rows, *(np.arange(start, stop) for start, stop in blocks)])
            keep = np.concatenate([np.ones(len(carry_rows), dtype=bool), *(c[1] for c in chunks)])
            index = np.flatnonzero(keep)  # buffer positions of the rows this pass yields
            if self.shuffle:
                index = index[rng.permutation(len(index))]
            n_full = len(index) // self.batch_size * self.batch_size
            for b in range(0, n_full, self.batch_size):
                at = index[b : b + self.batch_size]
                at = at if self.shuffle else _run_or_indices(at)
                batch = self._to_torch([v[at] for v in values])
                yield (batch, rows[at]) if with_rows else batch
            carry = [[v[index[n_full:]]] for v in values]
            carry_rows = rows[index[n_full:]]
        if len(carry_rows) and not self.drop_last:
            batch = self._to_torch([c[0] for c in carry])
            yield (batch, carry_rows) if with_rows else batch

    def __iter__(self) -> Iterator:
        return self.batches()

    def forever(self) -> Iterator:
        """Endless batches, reshuffled every epoch."""
        while True:
            yield from self.batches()

    def read_all(self, max_rows: int | None = None):
        """The split's rows in order (special tokens excluded if configured), as float tensors."""
        values: list[list[np.ndarray]] = [[] for _ in self.hooks]
        total = 0
        for start, stop in self._blocks:
            block, rows = self._read_block(start, stop)
            for j, v in enumerate(block):
                values[j].append(v)
            total += len(rows)
            if max_rows is not None and total >= max_rows:
                break
        joined = [np.concatenate(v)[:max_rows] for v in values]
        return self._to_torch(joined)


def _run_or_indices(at: np.ndarray) -> slice | np.ndarray:
    """Ascending ``at`` as a slice when it is one run of consecutive positions (the batch is
    then a view, not a copy), else as it is."""
    if len(at) and at[-1] - at[0] == len(at) - 1:
        return slice(int(at[0]), int(at[-1]) + 1)
    return at
