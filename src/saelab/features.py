"""What each latent of an SAE responds to: firing counts, top activations with their contexts,
activation histograms, and the logits a decoder direction promotes.

:func:`collect_feature_summary` streams the cache rows of the SAE's input hook in order (whole
contexts, so a top example's window never crosses into another context), encodes them in eval
mode (threshold inference for BatchTopK/Matryoshka) as sparse codes, and keeps a running top-n
per latent. Special tokens (BOS/EOS/PAD) are masked: they never count as firings, never become
top examples, and show activation 0 in context windows. One ``.npz`` holds the result
(:func:`save_feature_summary`); the co-occurrence dashboards and the trajectory analysis read it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saelab.cache.reader import split_rows
from saelab.codes import code_batches, collect_codes, sae_reader
from saelab.runtime import load_npz, savez_atomic
from saelab.saes.base import SAE

#: Encodings offered to the analyses (see :func:`encode_sparse`).
ENCODINGS = ("eval", "train_batchtopk")


class FeatureSummary(NamedTuple):
    """Per-latent statistics of one SAE over the first tokens of a cache."""

    firing_count: np.ndarray
    """[width] int64: tokens where the latent fires (> 0), special tokens excluded."""
    n_tokens: int
    """Tokens counted (non-special tokens of the contexts read)."""
    top_rows: np.ndarray
    """[width, top_n] int64: cache row of each top activation, largest first (-1: none)."""
    top_values: np.ndarray
    """[width, top_n] float32: the top activations (0 where ``top_rows`` is -1)."""
    context_tokens: np.ndarray
    """[width, top_n, before+1+after] int64: token ids around each top row, the top token at
    index ``before``; -1 outside the context (or where there is no top row)."""
    context_values: np.ndarray
    """[width, top_n, before+1+after] float32: the latent's activation on those tokens."""
    hist_edges: np.ndarray
    """[width, n_bins+1] float32: per-latent linear bin edges from 0 to its largest activation
    (all zero for a latent that never fires)."""
    hist_counts: np.ndarray
    """[width, n_bins] int64: counts of the latent's positive activations per bin."""
    meta: dict[str, Any]
    """sae name, hook, cache, split, before, after, top_n, n_bins, context_len, rows read."""

    @property
    def width(self) -> int:
        return int(self.firing_count.shape[0])

    @property
    def firing_rate(self) -> np.ndarray:
        """[width] fraction of counted tokens on which each latent fires."""
        return self.firing_count / max(self.n_tokens, 1)


# ---------------------------------------------------------------------------------------------
# Running top-n
# ---------------------------------------------------------------------------------------------


def merge_top_n(
    top_values: np.ndarray,
    top_rows: np.ndarray,
    latents: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Merge candidate entries (latent, value, row) into the per-latent top-n tables in place.

    Ties keep the earlier entry (existing ones first, then candidates in the given order), so
    streaming rows in order keeps the earliest row among equal activations.
    """
    width, top_n = top_values.shape
    have = top_rows >= 0
    old_latents = np.nonzero(have)[0]
    all_latents = np.concatenate([old_latents, latents.astype(np.int64)])
    all_values = np.concatenate([top_values[have], values.astype(np.float32)])
    all_rows = np.concatenate([top_rows[have], rows.astype(np.int64)])
    order = np.lexsort((-all_values, all_latents))  # stable: by latent, then value descending
    sorted_latents = all_latents[order]
    starts = np.searchsorted(sorted_latents, np.arange(width))
    rank = np.arange(len(order)) - starts[sorted_latents]
    keep = rank < top_n
    top_values.fill(0)
    top_rows.fill(-1)
    lat, rk, src = sorted_latents[keep], rank[keep], order[keep]
    top_values[lat, rk] = all_values[src]
    top_rows[lat, rk] = all_rows[src]


# ---------------------------------------------------------------------------------------------
# Histograms and context windows
# ---------------------------------------------------------------------------------------------


def latent_histograms(
    latents: np.ndarray, values: np.ndarray, width: int, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-latent histograms of positive activations on linear bins [0, max_i]."""
    max_value = np.zeros(width, dtype=np.float32)
    np.maximum.at(max_value, latents, values)
    edges = max_value[:, None] * np.linspace(0, 1, n_bins + 1, dtype=np.float32)[None, :]
    scale = np.where(max_value > 0, n_bins / np.maximum(max_value, 1e-30), 0)
    bins = np.minimum((values * scale[latents]).astype(np.int64), n_bins - 1)
    counts = np.bincount(latents * n_bins + bins, minlength=width * n_bins)
    return edges, counts.reshape(width, n_bins).astype(np.int64)


def sparse_lookup(
    keys_sorted: np.ndarray, values_sorted: np.ndarray, query: np.ndarray
) -> np.ndarray:
    """``values`` of ``query`` keys in a sorted key table, 0 where absent."""
    if len(keys_sorted) == 0:
        return np.zeros(query.shape, dtype=np.float32)
    pos = np.clip(np.searchsorted(keys_sorted, query), 0, len(keys_sorted) - 1)
    return np.where(keys_sorted[pos] == query, values_sorted[pos], 0).astype(np.float32)


def context_windows(
    top_rows: np.ndarray,
    tokens: np.ndarray,
    first_row: int,
    context_len: int,
    before: int,
    after: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices [..., before+1+after] around each top row, -1 where the window leaves the
    top row's context or the rows read (``tokens`` holds rows ``first_row ..``), and their ids."""
    offsets = np.arange(-before, after + 1)
    window = top_rows[..., None] + offsets
    same_context = (
        split_rows(window, context_len)[0] == split_rows(top_rows, context_len)[0][..., None]
    )
    valid = (top_rows[..., None] >= 0) & same_context
    valid &= (window >= first_row) & (window < first_row + len(tokens))
    window = np.where(valid, window, -1)
    ids = np.where(valid, tokens[np.clip(window - first_row, 0, len(tokens) - 1)], -1)
    return window, ids.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def collect_feature_summary(
    sae: SAE,
    cache_path: str | os.PathLike,
    n_tokens: int,
    top_n: int = 10,
    before: int = 8,
    after: int = 2,
    batch_size: int = 4096,
    *,
    n_bins: int = 32,
    split: str = "all",
    sae_name: str | None = None,
    progress: bool = True,
) -> FeatureSummary:
    """Firing counts, top-``top_n`` activations with context windows and histograms of every
    latent, over the first ``n_tokens`` rows (rounded up to whole contexts) of ``split``.

    Codes come from the SAE in eval mode; the SAE's training/eval mode is restored after.
    """
    if top_n < 1 or before < 0 or after < 0 or n_bins < 1:
        raise ValueError(
            f"need top_n >= 1, before >= 0, after >= 0, n_bins >= 1; got top_n={top_n}, "
            f"before={before}, after={after}, n_bins={n_bins}"
        )
    hook = sae.cfg.hook_name
    reader = sae_reader(sae, cache_path, batch_size, split)
    ctx = reader.context_len
    n_rows = reader.rows_for_tokens(n_tokens)
    first_row = reader.row_range[0]
    special_all = reader.group["special_mask"][first_row : first_row + n_rows].astype(bool)
    tokens = reader.group["tokens"][first_row : first_row + n_rows].astype(np.int64)

    width = sae.cfg.width
    firing = np.zeros(width, dtype=np.int64)
    top_values = np.zeros((width, top_n), dtype=np.float32)
    top_rows = np.full((width, top_n), -1, dtype=np.int64)

    def merged(batches):
        """The stream, each batch's entries counted and merged into the top-n as it passes."""
        for batch in batches:
            latents = batch.codes.latents.numpy()
            firing[:] += np.bincount(latents, minlength=width)
            values = batch.codes.values.float().numpy()
            merge_top_n(top_values, top_rows, latents, values, batch.rows[batch.codes.rows.numpy()])
            yield batch

    stream = code_batches(
        sae, reader, n_rows=n_rows, drop_special=True, desc="features" if progress else None
    )
    collected = collect_codes(merged(stream), latent_dtype=np.int32)
    all_rows, all_latents, all_values, done = collected
    hist_edges, hist_counts = latent_histograms(all_latents, all_values, width, n_bins)

    window, context_tokens = context_windows(top_rows, tokens, first_row, ctx, before, after)
    keys = all_rows * width + all_latents
    order = np.argsort(keys, kind="stable")
    query = np.where(window >= 0, window * width + np.arange(width)[:, None, None], -1)
    context_values = np.where(
        window >= 0, sparse_lookup(keys[order], all_values[order], query), 0
    ).astype(np.float32)

    meta = {
        "sae": sae_name or sae.cfg.extra.get("run", ""),
        "arch": sae.cfg.arch,
        "hook": hook,
        "cache": str(cache_path),
        "split": split,
        "encoding": "eval",
        "top_n": top_n,
        "before": before,
        "after": after,
        "n_bins": n_bins,
        "context_len": ctx,
        "first_row": int(first_row),
        "rows_read": int(done),
        "group_sizes": list(sae.cfg.group_sizes or []),
    }
    return FeatureSummary(
        firing_count=firing,
        n_tokens=int((~special_all[:done]).sum()),
        top_rows=top_rows,
        top_values=top_values,
        context_tokens=context_tokens,
        context_values=context_values,
        hist_edges=hist_edges,
        hist_counts=hist_counts,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

_ARRAY_FIELDS = (
    "firing_count",
    "top_rows",
    "top_values",
    "context_tokens",
    "context_values",
    "hist_edges",
    "hist_counts",
)


def save_feature_summary(summary: FeatureSummary, path: str | os.PathLike) -> Path:
    """Write one compressed ``.npz`` atomically (a temp file in the same folder, then rename)."""
    arrays = {name: getattr(summary, name) for name in _ARRAY_FIELDS}
    arrays["n_tokens"] = np.array(summary.n_tokens, dtype=np.int64)
    arrays["meta_json"] = np.array(json.dumps(summary.meta))
    return savez_atomic(path, arrays)


def load_feature_summary(path: str | os.PathLike) -> FeatureSummary:
    data = load_npz(
        path, (*_ARRAY_FIELDS, "n_tokens", "meta_json"), "feature summary", "feature_summary"
    )
    arrays = {name: data[name] for name in _ARRAY_FIELDS}
    return FeatureSummary(
        n_tokens=int(data["n_tokens"]), meta=json.loads(str(data["meta_json"])), **arrays
    )


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def token_strings(tokenizer, ids: np.ndarray | list[int]) -> list[str]:
    """Each id decoded on its own (``''`` for -1 padding)."""
    return [tokenizer.decode([int(i)]) if int(i) >= 0 else "" for i in np.ravel(ids)]


def describe_latent(summary: FeatureSummary, latent: int, tokenizer, n: int = 5) -> str:
    """One line: firing rate, the most frequent tokens among its top activations, one context.

    e.g. ``fires 0.31% · top tokens: ' def', ' class' · e.g. '... import os «def» foo'``
    """
    if not 0 <= latent < summary.width:
        raise IndexError(f"latent {latent} is out of range 0..{summary.width - 1}")
    rate = 100 * summary.firing_rate[latent]
    if summary.firing_count[latent] == 0:
        return f"fires 0% (never in {summary.n_tokens} tokens)"
    before = int(summary.meta["before"])
    have = summary.top_rows[latent] >= 0
    centre = summary.context_tokens[latent, have, before]
    counts = Counter(int(t) for t in centre)
    # most frequent first; ties in order of first (largest) activation
    first_seen = {int(t): i for i, t in reversed(list(enumerate(centre)))}
    common = sorted(counts, key=lambda t: (-counts[t], first_seen[t]))[:n]
    tokens = ", ".join(repr(s) for s in token_strings(tokenizer, common))
    window = summary.context_tokens[latent, 0]
    pieces = token_strings(tokenizer, window)
    text = "".join(pieces[:before]) + "«" + pieces[before] + "»" + "".join(pieces[before + 1 :])
    text = text.replace("\n", "\\n")
    return f"fires {rate:.3g}% · top tokens: {tokens} · e.g. {text!r}"
