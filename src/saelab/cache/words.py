"""Cached activations of chosen word tokens (the absorption probe's inputs), from a cache split."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from saelab.cache.reader import ActivationReader


def cached_word_activations(
    cache_path: str | os.PathLike,
    hook: str,
    word_ids: Iterable[int],
    max_per_type: int | None = 8,
    max_tokens: int = 50_000,
    split: str = "all",
    batch_size: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Activations at ``hook`` and token ids of cached tokens whose id is in ``word_ids``: the
    first ``max_per_type`` occurrences of each id, at most ``max_tokens`` in all, cache order."""
    reader = ActivationReader(
        cache_path, hook, batch_size, split=split, shuffle=False, drop_last=False
    )
    wanted = np.asarray(sorted({int(i) for i in word_ids}), dtype=np.int64)
    seen = np.zeros(int(wanted.max()) + 1 if len(wanted) else 1, dtype=np.int64)
    acts, ids, total = [], [], 0
    for batch, rows in reader.batches(with_rows=True):
        if total >= max_tokens or not len(wanted):
            break
        tok = reader.tokens_of(rows)
        keep = np.isin(tok, wanted)
        if max_per_type is not None and keep.any():
            index = np.nonzero(keep)[0]
            rank = seen[tok[index]] + _rank_within(tok[index])
            np.add.at(seen, tok[index], 1)
            keep[index[rank >= max_per_type]] = False
        keep[np.cumsum(keep) > max_tokens - total] = False
        if keep.any():
            acts.append(batch[torch.from_numpy(keep)])
            ids.append(torch.from_numpy(tok[keep]))
            total += int(keep.sum())
    if not acts:
        return torch.zeros(0, reader.widths[hook]), torch.zeros(0, dtype=torch.long)
    return torch.cat(acts), torch.cat(ids)


def _rank_within(values: np.ndarray) -> np.ndarray:
    """For each element, how many equal values come before it in ``values``."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    first = np.searchsorted(sorted_values, sorted_values, side="left")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - first
    return rank


def tokens_in_cache(cache_path: str | os.PathLike, hook: str, split: str = "heldout") -> Tensor:
    """Distinct token ids of a cache split (to restrict :func:`single_word_tokens`)."""
    reader = ActivationReader(cache_path, hook, 1, split=split, shuffle=False)
    lo, hi = reader.row_range
    return torch.from_numpy(np.unique(np.asarray(reader.group["tokens"][lo:hi], dtype=np.int64)))


def single_word_tokens(
    tokenizer, token_ids: Iterable[int] | None = None, min_length: int = 2
) -> dict[int, str]:
    """Token ids that decode to one ASCII alphabetic word of ≥ ``min_length`` letters, with or
    without one leading space (``" the"``, ``"The"``), mapped to the word. Special tokens are
    skipped. ``token_ids`` restricts the search (e.g. to ids present in a corpus)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = range(len(tokenizer)) if token_ids is None else sorted({int(i) for i in token_ids})
    words = {}
    for i in ids:
        if i in special:
            continue
        text = tokenizer.decode([i])
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= min_length and word.isascii() and word.isalpha():
            words[i] = word
    return words
